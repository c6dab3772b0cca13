"""Recommendation policy: candidates, consent on the inputs, sensitive items, ranking, a reason per item.

Pure of HTTP (the service's `/recommend` is a thin call into `RecommendationPolicy.recommend`), so each
promise of the guard section is a property of this module and of `serving.guard`, tested here and over
HTTP:

- Consent acts on the inputs: without `personalization` the answer is exactly the non-personal one
  (context and popularity, as for an anonymous visitor); otherwise only consented entries steer the
  ranking, and the recommender's learned user vector is used only while every source in the person's
  history is still granted (`serving.inputs.history_is_consented`).
- Sensitive items (catalog flag or configured terms) are never in popular or context lists, never on
  outbound, social, store or anonymous outputs; on the customer's own logged-in site or app they may
  appear in a personal list only after the customer showed or declared interest. Life-event items (the
  milder tier) appear only in personal lists on the customer's own logged-in site or app. At most
  `max_sensitive_share` of a list is either.
- Each item carries its own reason from the signal that produced it: a personal item names the
  category of a consented signal in *that item's* category (or the viewed item a look-alike came from),
  or the declared interest it lies in ("Because you told us you like running": the guard's declared
  register, `serving.guard.declared_signals`), else says "Picked for you"; context and popular items
  describe the page or the shop, never the person.
- Declared interests (zero-party, with `personalization` only) count as interest for sensitive items, and
  for a newcomer (fewer than `DECLARED_LEAD_BELOW` consented items the model knows, no learned profile) on a
  list without a page context, the popular items of their declared categories lead the list
  (`DECLARED_LEAD_SHARE` of it): a customer who said "Running" and did little else sees running first.
- A returned item is never shown again while the return is stored; a recent return whose reason is about
  the product (`PRODUCT_RETURN_REASONS`: not as described, damaged) also leaves out its closest look-alikes,
  while a fit reason (too small, too large, poor fit) leaves them in and the category keeps its interest:
  one rule (`_left_out`) for /recommend, /similar_items and the next-best-action's cross-sell.
- What a request held that the policy could not use (an unknown identifier, item or category, a miscased
  category) is named in `InputWarning`s and left out of the query, never silently turned into something
  else; `similar` answers a product page, falling back to the item's catalog category (then the levels
  above it, then the shop) when the model does not know the item yet, under the same rules as `recommend`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from features.catalog import CATEGORY_SEPARATOR, Catalog, CatalogItem, split_category
from features.schema import (
    COOKIE_ID,
    DEVICE_ID,
    EMAIL,
    FIT_RETURN_REASONS,
    HASH_PREFIX,
    HASHED_IDENTIFIERS,
    VIEW,
)
from features.store import OnlineProfile, ProfileEntry
from serving.guard import (
    COMPLEMENT,
    PERSONAL,
    POPULAR,
    POPULAR_CATEGORY,
    RECOMMENDATION_REASON,
    SIMILAR,
    ConsentState,
    GuardPolicy,
    GuardRequest,
    Sensitivity,
    Signal,
    declared_signals,
    guard,
    may_show,
    signal_tier,
)
from serving.inputs import consented_profile, history_is_consented, item_signal


class Recommender(Protocol):
    """What serving asks of a recommender (the registered pyfunc and `PopularityFallback` implement it)."""

    def recommend(self, user_id: str | None, k: int, exclude: Sequence[str] = (),
                  recent_items: Sequence[str] = ()) -> list[tuple[str, float]]: ...
    def similar_items(self, item_id: str, k: int) -> list[tuple[str, float]]: ...
    def complements(self, item_id: str, k: int) -> list[tuple[str, float]]: ...
    def popular(self, k: int, category: str | None = None) -> list[tuple[str, float]]: ...
    def item_category(self, item_id: str) -> str | None: ...
    def has_user(self, user_id: str) -> bool: ...
    def has_item(self, item_id: str) -> bool: ...


#: Views this recent are the shopping session: its newest one gets slots of its own.
SESSION_WINDOW = timedelta(minutes=30)
#: 0-based ranks that look-alikes of the session's newest view take (the rest stay the model's order).
SESSION_SLOTS = (1, 4)
#: A customer with fewer consented items the model knows than this (and no learned profile) is a newcomer:
#: their declared interests lead their list (the behaviour is too thin to say more than they told us).
DECLARED_LEAD_BELOW = 3
#: Share of a newcomer's list (at least one slot) that the popular items of their declared interests take, first.
DECLARED_LEAD_SHARE = 0.5
#: A return this recent whose reason speaks against the product (`PRODUCT_RETURN_REASONS`) also leaves out
#: the returned item's closest look-alikes; the item itself stays out as long as the return is stored.
RETURN_REASON_WINDOW = timedelta(days=30)
#: How many of the returned item's look-alikes (the model's `similar_items`, best first) such a return leaves out.
RETURN_LOOKALIKES = 5
#: Return reasons (codes of `features.schema.RETURN_REASONS`) about the product itself: the customer disliked
#: it, so what looks like it is not pushed either. A fit reason (`FIT_RETURN_REASONS`) keeps the look-alikes
#: (another cut or silhouette may fit; the catalog has no sizes, so no "next size" is claimed); wrong_item
#: (the shop's mistake), changed_mind and other say nothing about the product: only the item is left out.
PRODUCT_RETURN_REASONS: frozenset[str] = frozenset({"not_as_described", "damaged"})


# ---------------------------------------------------------------------------------------------
# The personal query (what was seen, what to leave out)
# ---------------------------------------------------------------------------------------------
def _newest_first(entries: Iterable[Any]) -> list[Any]:
    """Entries newest first; ties keep their order (the store's lists are already newest first)."""
    stamped = [(e.ts, n, e) for n, e in enumerate(entries) if e.item_id]
    stamped.sort(key=lambda x: (-x[0].timestamp(), x[1]))
    return [e for _, _, e in stamped]


def recent_interest(profile: Any) -> list[str]:
    """Items the customer viewed (or tried on, liked, clicked) or put in the cart, newest first,
    de-duplicated: the order is the weight the recommender gives them."""
    if profile is None:
        return []
    entries = [*(profile.recent_views or ()), *(profile.cart_items or ())]
    return list(dict.fromkeys(e.item_id for e in _newest_first(entries)))


def session_views(profile: Any, now: datetime, window: timedelta = SESSION_WINDOW) -> list[Any]:
    """The entries of the last `window`, newest first, one per item."""
    if profile is None:
        return []
    out: dict[str, Any] = {}
    for e in _newest_first(profile.recent_views or ()):
        if now - e.ts <= window:
            out.setdefault(e.item_id, e)
    return list(out.values())


def blocked_purchases(profile: Any, now: datetime) -> set[str]:
    """Items bought recently enough to leave out; a consumable comes back at its replenishment time
    (the profile's own re-buy interval for that item)."""
    if profile is None:
        return set()
    replenish = dict(getattr(profile, "replenish_days", None) or {})
    last: dict[str, datetime] = {}
    for e in profile.purchases or ():
        if e.item_id and (e.item_id not in last or e.ts > last[e.item_id]):
            last[e.item_id] = e.ts
    return {item for item, ts in last.items()
            if item not in replenish or now < ts + timedelta(days=float(replenish[item]))}


def personal_query(profile: Any, now: datetime) -> tuple[list[str], list[str]]:
    """(recent items newest first, items to leave out) of a (consented) profile: one query for
    /recommend and /next_best_action's cross-sell, so both follow what was just seen and neither shows
    a recent purchase (consumables come back at their re-buy time) or a returned item."""
    if profile is None:
        return [], []
    suppressed = blocked_purchases(profile, now) | {e.item_id for e in profile.returns or () if e.item_id}
    return recent_interest(profile), sorted(suppressed)


def recent_return_reasons(profile: Any, now: datetime, window: timedelta = RETURN_REASON_WINDOW
                          ) -> list[tuple[str, str]]:
    """(item, reason) for each item of the (consented) profile whose latest return lies within `window` and
    that has a stored reason (`OnlineProfile.return_reasons`: its latest return that gave one), newest first.
    Only the profile's kept returns count, so a return whose source is not granted brings no reason."""
    if profile is None:
        return []
    reasons = getattr(profile, "return_reasons", None) or {}
    out: dict[str, str] = {}
    for e in _newest_first(profile.returns or ()):
        if e.item_id not in out and now - e.ts <= window and e.item_id in reasons:
            out[e.item_id] = reasons[e.item_id]
    return list(out.items())


def declared_category(category: str | None, declared: Sequence[str]) -> str | None:
    """The most specific declared interest `category` lies in (itself or a level above it), if any."""
    if not category:
        return None
    inside = [d for d in declared if category == d or category.startswith(d + CATEGORY_SEPARATOR)]
    return max(inside, key=len, default=None)


def lead_with(head: Sequence[tuple[str, float]], rest: Sequence[tuple[str, float]], k: int
              ) -> list[tuple[str, float]]:
    """`head` first, then `rest` without them, k in all; each item takes the score of the slot it fills
    (the k scores sorted), so scores stay non-increasing as in `blend_session`."""
    ids = list(dict.fromkeys([i for i, _ in head] + [i for i, _ in rest]))[:k]
    score = dict(rest)
    score.update(dict(head))
    return list(zip(ids, sorted((score[i] for i in ids), reverse=True), strict=True))


def rank_candidates(candidates: Iterable[tuple[str, float]], k: int, exclude: set[str],
                    in_stock: Mapping[str, bool]) -> list[tuple[str, float]]:
    """First k candidates not excluded and not known to be out of stock, in the model's order."""
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for item, score in candidates:
        if item in exclude or item in seen or in_stock.get(item, True) is False:
            continue
        seen.add(item)
        out.append((item, float(score)))
        if len(out) >= k:
            break
    return out


def blend_session(personal: Sequence[tuple[str, float]], session: Sequence[tuple[str, float]], k: int,
                  slots: Sequence[int] = SESSION_SLOTS) -> list[tuple[str, float, bool]]:
    """The model's top-k with the session's items (best first) guaranteed at `slots` (0-based ranks):
    by the n-th slot, at least n of them.

    Why: the model's fold-in weighs a fresh view against the whole history, and for a long history one
    view of something new often left the top 10 unchanged (9 of 60 trials); a shopper expects what they
    just looked at to show. A session item the model already ranks high counts where it stands; one it
    ranks lower moves up. A moved item takes the score of the item whose slot it fills, so scores stay
    non-increasing. Returns (item, score, moved by this rule).
    """
    out = [(i, float(s), False) for i, s in personal[:k]]
    own = dict(session)
    for n, slot in enumerate(sorted(slots), start=1):
        if slot >= k:
            break
        head = {x[0] for x in out[: slot + 1]}
        if len(head & own.keys()) >= n:
            continue
        pick = next((i for i, _ in session if i not in head), None)
        if pick is None:
            break
        out = [x for x in out if x[0] != pick]
        score = out[slot][1] if slot < len(out) else min(float(own[pick]), out[-1][1]) if out else float(own[pick])
        out.insert(min(slot, len(out)), (pick, score, True))
        out = out[:k]
    return out


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """One /recommend request, as the policy needs it (identifiers already resolved by the service)."""

    channel: str
    k: int
    now: datetime
    logged_in: bool = False
    context_item: str | None = None
    context_category: str | None = None
    exclude: frozenset[str] = frozenset()
    #: `exclude` as sent (warnings name an item by its index); empty: sorted `exclude`
    exclude_order: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pick:
    item_id: str
    score: float
    basis: str  # serving.guard.REASON_BASES
    reason: str
    item: CatalogItem | None = None


@dataclass(frozen=True)
class Recommendation:
    items: tuple[Pick, ...]
    personalized: bool  # the ranking used the person's own (consented) data
    audit: tuple[str, ...] = field(default_factory=tuple)  # for operators: what was left out and why


@dataclass(frozen=True)
class _Candidate:
    item_id: str
    score: float
    basis: str
    backing: ProfileEntry | None = None  # the entry a look-alike came from (session)
    category: str | None = None  # POPULAR_CATEGORY from a fallback level: the category it is popular in


@dataclass(frozen=True)
class InputWarning:
    """A value of the request that the answer could not use: `field` as the caller sent it (`customer_id`,
    `context.category`, `exclude[3]`), `reason` why and what the answer did instead. Reasons never repeat
    the value (it may be an identifier)."""

    field: str
    reason: str


@dataclass(frozen=True)
class Similar:
    """A product page's lists: look-alikes (or the category fallback) and complements."""

    similar: tuple[Pick, ...]
    complements: tuple[Pick, ...]
    warnings: tuple[InputWarning, ...] = ()
    audit: tuple[str, ...] = ()


#: Unknown items named per list field (`exclude[i]`) before one warning sums up the rest.
MAX_ITEM_WARNINGS = 10
#: Categories under one fallback level whose popular items are merged (a level with more takes the first).
MAX_FALLBACK_CATEGORIES = 50


@dataclass(frozen=True)
class _CategoryIndex:
    """The catalog's categories: every path and prefix by its case-folded spelling, and the full paths
    under each prefix. Built from the distinct category paths, so a catalog change that leaves them as
    they were (a stock or price update) reuses it (`RecommendationPolicy._category_index`)."""

    categories: frozenset[str]
    spelling: Mapping[str, str]
    under: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, categories: frozenset[str]) -> _CategoryIndex:
        spelling: dict[str, str] = {}
        under: dict[str, set[str]] = {}
        for category in sorted(categories):
            path = category.split(CATEGORY_SEPARATOR)
            for depth in range(1, len(path) + 1):
                prefix = CATEGORY_SEPARATOR.join(path[:depth])
                spelling.setdefault(prefix.casefold(), prefix)
                under.setdefault(prefix, set()).add(category)
        return cls(categories, spelling, {k: tuple(sorted(v)) for k, v in under.items()})


def identifier_warnings(identifiers: Mapping[str, str], identified: bool,
                        normalise: Callable[[str, str], str | None]) -> list[InputWarning]:
    """Why identifiers did not identify anyone: an email or phone that is not one (always), and, when no
    profile was found, each identifier sent (nobody is known by it). `normalise(column, value)` is the
    store's hasher's (`IdentifierHasher.normalise`), so the rule is the one the store looks up with."""
    out: list[InputWarning] = []
    for col, value in identifiers.items():
        if col in HASHED_IDENTIFIERS and not value.startswith(HASH_PREFIX) and normalise(col, value) is None:
            kind = "an email address" if col == EMAIL else "a phone number"
            out.append(InputWarning(col, f"not {kind} Mirror can read: ignored"))
        elif not identified:
            later = " yet (the first event carrying it links it)" if col in (DEVICE_ID, COOKIE_ID) else ""
            out.append(InputWarning(col, f"no customer is known by this {col}{later}: the answer is not personal"))
    return out


class RecommendationPolicy:
    """Turns a model, the catalog, a profile and its consent into a guarded list (see module doc)."""

    def __init__(self, policy: GuardPolicy, *, max_sensitive_share: float = 1 / 3) -> None:
        if not 0.0 <= max_sensitive_share <= 1.0:
            raise ValueError("max_sensitive_share must be in [0, 1]")
        self.policy = policy
        self.max_sensitive_share = max_sensitive_share
        self._tiers: dict[tuple[int, str], Sensitivity] = {}
        self._categories: tuple[Catalog, _CategoryIndex] | None = None

    # -- sensitivity of items (memoised per catalog object: tiers change only with the catalog) ---------
    def tier(self, item_id: str, catalog: Catalog, model: Recommender) -> Sensitivity:
        key = (id(catalog), item_id)
        tier = self._tiers.get(key)
        if tier is None:
            if len(self._tiers) > 200_000:
                self._tiers.clear()
            item = catalog.get(item_id)
            s = Signal(VIEW, "web", item_id=item_id, item_name=item.name if item else None,
                       category=(item.category if item and item.category else model.item_category(item_id)),
                       sensitive=bool(item.sensitive) if item else False)
            tier = self._tiers[key] = signal_tier(s, self.policy)
        return tier

    def recommend(self, model: Recommender, catalog: Catalog, profile: OnlineProfile | None,
                  consent: ConsentState, q: Query) -> Recommendation:
        audit: list[str] = []
        own = consented_profile(profile, consent)
        pid = profile.profile_id if profile is not None else None
        if profile is not None and own is None:
            audit.append("personalization not granted: non-personal answer")
        recent, suppressed = personal_query(own, q.now)
        # the learned user vector rests on the whole stored history: only while all of it is consented,
        # and never for a person erased since (their id comes back the same when they return)
        use_vector = bool(pid and own is not None and history_is_consented(profile, consent)
                          and profile.erased_at is None and model.has_user(pid))
        if own is not None and pid and model.has_user(pid) and not use_vector:
            audit.append("learned profile not used: erased before, or a source of the history is not granted")
        ctx = q.context_item
        fold = list(dict.fromkeys(([ctx] if ctx else []) + recent))
        personal = own is not None and (use_vector or any(model.has_item(i) for i in recent))
        exclude = self._left_out(q, suppressed, own, model, audit) | ({ctx} if ctx else set())
        want = q.k + len(exclude) + 10
        cands: list[_Candidate] = []
        session: list[_Candidate] = []
        if personal:
            # personal candidates may be sensitive or life-event ones the cap leaves out (up to two thirds of
            # a list's worth): a deeper pool keeps the list k long
            got = model.recommend(pid if use_vector else None, want + 2 * q.k, exclude=sorted(exclude),
                                  recent_items=fold)
            cands = [_Candidate(i, s, PERSONAL) for i, s in got]
            fresh: list[tuple[str, ProfileEntry | None]] = ([(ctx, None)] if ctx else [])
            fresh += [(e.item_id, e) for e in session_views(own, q.now)]
            viewed = next(((i, e) for i, e in fresh if model.has_item(i)), None)
            if viewed:
                basis = PERSONAL if viewed[1] is not None else SIMILAR
                session = [_Candidate(i, s, basis, viewed[1]) for i, s in model.similar_items(viewed[0], want)]
        else:
            if ctx and model.has_item(ctx):
                cands += [_Candidate(i, s, COMPLEMENT) for i, s in model.complements(ctx, want)]
                cands += [_Candidate(i, s, SIMILAR) for i, s in model.similar_items(ctx, want)]
            category = q.context_category or (self._category(ctx, catalog, model) if ctx else None)
            if category:
                cands += [_Candidate(i, s, POPULAR_CATEGORY) for i, s in model.popular(want, category=category)]
            cands += [_Candidate(i, s, POPULAR) for i, s in model.popular(want)]
        interests = set(own.category_counts) if own is not None else set()
        interested_items = set(recent) | {e.item_id for e in (own.purchases if own else ())}
        declared = [str(s.category) for s in declared_signals(own, q.channel) if s.category]  # [] without consent
        known = {i for i in interested_items if model.has_item(i)}
        lead: list[_Candidate] = []
        if declared and not use_vector and len(known) < DECLARED_LEAD_BELOW and not (ctx or q.context_category):
            lead = self._declared_candidates(declared, catalog, model, want)
        ok = self._admissible(cands + session, catalog, model, q, exclude, interests, interested_items, audit,
                              declared=declared)
        by_id: dict[str, _Candidate] = {}
        for c in cands + session:
            by_id.setdefault(c.item_id, c)
        # the cap is applied to every admissible candidate, so what it leaves out is refilled from the
        # candidates below it (capping the top k alone made a list shorter than k)
        ranked = self._cap_sensitive(rank_candidates(((c.item_id, c.score) for c in cands if c.item_id in ok),
                                                     len(cands), set(), {}), catalog, model, len(cands), q.k, audit)
        chosen = ranked[:q.k]
        if session:
            skip = {session[0].backing.item_id} if session[0].backing is not None else set()
            closest = rank_candidates(((c.item_id, c.score) for c in session if c.item_id in ok),
                                      len(SESSION_SLOTS), skip | exclude, {})
            blended = blend_session(chosen, closest, q.k)
            chosen = [(i, s) for i, s, _ in blended]
            sess = {c.item_id: c for c in session}
            by_id.update({i: sess[i] for i, _, moved in blended if moved})
            taken = {i for i, _ in chosen}
            chosen = self._cap_sensitive(chosen + [x for x in ranked if x[0] not in taken], catalog, model,
                                         q.k, q.k, audit)
        if lead:  # a newcomer: what they told us leads (its own admissibility: these are personal picks)
            ok_lead = self._admissible(lead, catalog, model, q, exclude, interests, interested_items, audit,
                                       declared=declared)
            head = rank_candidates(((c.item_id, c.score) for c in lead if c.item_id in ok_lead),
                                   max(1, math.ceil(DECLARED_LEAD_SHARE * q.k)), set(), {})
            merged = lead_with(head, chosen, q.k)
            taken = {i for i, _ in merged}
            chosen = self._cap_sensitive(merged + [x for x in ranked if x[0] not in taken], catalog, model,
                                         q.k, q.k, audit)
            by_id.update({c.item_id: c for c in lead if c.item_id in dict(head)})
            personal = personal or bool(head)
            audit.append(f"newcomer: {len(head)} item(s) from declared interests lead")
        picks = self._with_reasons(chosen, by_id, own, catalog, model, consent, q)
        return Recommendation(tuple(picks), personalized=personal, audit=tuple(audit))

    def _declared_candidates(self, declared: Sequence[str], catalog: Catalog, model: Recommender,
                             want: int) -> list[_Candidate]:
        """Popular items of each declared interest (the category and every catalog category under it),
        taken in turn across interests so that one does not crowd out the others; basis PERSONAL (they
        rest on what the customer told us)."""
        index = self._category_index(catalog)
        per = [self._popular_under(d, index, model, want) for d in declared]
        out: list[_Candidate] = []
        for row in range(max((len(g) for g in per), default=0)):
            out += [_Candidate(g[row][0], g[row][1], PERSONAL) for g in per if row < len(g)]
        return out

    def similar(self, model: Recommender, catalog: Catalog, profile: OnlineProfile | None, consent: ConsentState,
                q: Query) -> Similar:
        """A product page (`q.context_item`): look-alikes and complements under `recommend`'s rules for the
        asking customer (what they bought recently or returned is left out, with `personalization`; these
        lists are not personal, so they hold nothing sensitive or life-event). An item the model does not
        know yet gets its catalog category's popular items (deepest level first, then the levels above),
        then the shop's; an item unknown to both gets the shop's, with a warning."""
        item = q.context_item
        if not item:
            raise ValueError("similar needs the page's item (Query.context_item)")
        audit: list[str] = []
        warnings: list[InputWarning] = []
        own = consented_profile(profile, consent)
        _, suppressed = personal_query(own, q.now)
        exclude = self._left_out(q, suppressed, own, model, audit) | {item}
        want = q.k + len(exclude) + 10
        comp: list[_Candidate] = []
        if model.has_item(item):
            sim = [_Candidate(i, s, SIMILAR) for i, s in model.similar_items(item, want)]
            comp = [_Candidate(i, s, COMPLEMENT) for i, s in model.complements(item, want)]
        else:
            known = catalog.get(item)
            sim = self._category_fallback(known, catalog, model, want)
            if known is None:
                warnings.append(InputWarning("item_id", "unknown item (not in the catalog or the model): "
                                                        "popular items instead"))
            else:
                audit.append("item not in the model yet: popular items of its catalog category")
        lists = []
        for cands in (sim, comp):
            ok = self._admissible(cands, catalog, model, q, exclude, set(), set(), audit)
            by_id: dict[str, _Candidate] = {}
            for c in cands:
                by_id.setdefault(c.item_id, c)
            chosen = rank_candidates(((c.item_id, c.score) for c in cands if c.item_id in ok), q.k, set(), {})
            lists.append(tuple(self._with_reasons(chosen, by_id, own, catalog, model, consent, q)))
        return Similar(lists[0], lists[1], tuple(warnings), tuple(audit))

    def _category_fallback(self, item: CatalogItem | None, catalog: Catalog, model: Recommender,
                           want: int) -> list[_Candidate]:
        """Popular items of the item's category path, deepest level first (each level: the model's popular
        items of every catalog category under it, by popularity), then the shop's popular items."""
        out: list[_Candidate] = []
        path = item.category_path if item is not None else ()
        index = self._category_index(catalog)
        for depth in range(len(path), 0, -1):
            level = CATEGORY_SEPARATOR.join(path[:depth])
            out += [_Candidate(i, s, POPULAR_CATEGORY, category=level)
                    for i, s in self._popular_under(level, index, model, want)]
        out += [_Candidate(i, s, POPULAR) for i, s in model.popular(want)]
        return out

    @staticmethod
    def _popular_under(level: str, index: _CategoryIndex, model: Recommender, want: int
                       ) -> list[tuple[str, float]]:
        """The model's popular items of `level` and of every catalog category under it (the first
        MAX_FALLBACK_CATEGORIES), by popularity: the one rule for a category fallback level and a
        declared interest."""
        got: list[tuple[str, float]] = []
        for cat in dict.fromkeys((level, *index.under.get(level, ())[:MAX_FALLBACK_CATEGORIES])):
            got += model.popular(want, category=cat)
        got.sort(key=lambda x: -x[1])  # stable: ties keep the model's order
        return got

    # -- what a request holds that the policy cannot use ------------------------------------------
    def checked(self, model: Recommender, catalog: Catalog, q: Query) -> tuple[Query, list[InputWarning]]:
        """The query with what it cannot use left out (an item or category nobody knows), and a warning
        for each such value, and for excluded items nobody knows."""
        warnings: list[InputWarning] = []
        ctx = q.context_item
        if ctx and not self.knows_item(ctx, catalog, model):
            warnings.append(InputWarning("context.item_id", "unknown item (not in the catalog or the model): "
                                                            "ignored, no look-alikes of it"))
            ctx = None
        category = q.context_category
        if category:
            category, warning = self.known_category(category, catalog, model, "context.category")
            warnings += [warning] if warning else []
        warnings += self.unknown_items(q.exclude_order or sorted(q.exclude), catalog, model, "exclude")
        return dataclasses.replace(q, context_item=ctx, context_category=category), warnings

    def knows_item(self, item_id: str, catalog: Catalog, model: Recommender) -> bool:
        return item_id in catalog or model.has_item(item_id)

    def unknown_items(self, items: Sequence[str], catalog: Catalog, model: Recommender,
                      field_name: str) -> list[InputWarning]:
        """A warning per item of the list field that neither the catalog nor the model knows (the first
        MAX_ITEM_WARNINGS, then one for the rest)."""
        unknown = [n for n, i in enumerate(items) if not self.knows_item(i, catalog, model)]
        out = [InputWarning(f"{field_name}[{n}]", "unknown item (not in the catalog or the model): nothing to "
                                                  "leave out") for n in unknown[:MAX_ITEM_WARNINGS]]
        if len(unknown) > MAX_ITEM_WARNINGS:
            out.append(InputWarning(field_name, f"{len(unknown) - MAX_ITEM_WARNINGS} more unknown items"))
        return out

    def known_category(self, category: str, catalog: Catalog, model: Recommender,
                       field_name: str) -> tuple[str | None, InputWarning | None]:
        """(the category as the catalog spells it, None) when the catalog or the model knows it; else (None,
        a warning), suggesting the catalog's spelling when only the case differs. Levels compare exactly:
        "sports > socks" is not "Sports > Socks" (a catalog may hold both)."""
        try:
            canonical = CATEGORY_SEPARATOR.join(split_category(category))
        except ValueError:
            return None, InputWarning(field_name, "not a category path (an empty level): ignored")
        index = self._category_index(catalog)
        if canonical in index.under or model.popular(1, category=canonical):
            return canonical, None
        near = index.spelling.get(canonical.casefold())
        hint = f"; did you mean {near!r}? (categories are case-sensitive)" if near else ""
        return None, InputWarning(field_name, f"unknown category: ignored{hint}")

    def _category_index(self, catalog: Catalog) -> _CategoryIndex:
        """The index of this catalog object: one pass over its items when the object is new (a catalog
        change; ~50 ms per 100,000 items), the index itself rebuilt only when the set of categories changed."""
        memo = self._categories
        if memo is None or memo[0] is not catalog:
            categories = frozenset(it.category for it in catalog if it.category)
            index = memo[1] if memo is not None and memo[1].categories == categories else _CategoryIndex.of(categories)
            memo = self._categories = (catalog, index)
        return memo[1]

    # -- filtering ------------------------------------------------------------------------------
    def _left_out(self, q: Query, suppressed: Iterable[str], own: OnlineProfile | None, model: Recommender,
                  audit: list[str]) -> set[str]:
        """What a list for this query may not hold, whichever list: the caller's exclusions, the customer's
        recent purchases and returns (`suppressed`, from `personal_query`), and for a return within
        `RETURN_REASON_WINDOW` with a reason about the product (`PRODUCT_RETURN_REASONS`) the returned item's
        `RETURN_LOOKALIKES` closest look-alikes; a fit reason leaves them in (audited either way). The one
        place for it, shared by `recommend` and `similar` (and so the next-best-action's cross-sell)."""
        out = set(q.exclude) | set(suppressed)
        product: dict[str, list[int]] = {}  # reason -> [returns, look-alikes left out]
        fit: dict[str, int] = {}
        for item, reason in recent_return_reasons(own, q.now):
            if reason in PRODUCT_RETURN_REASONS:
                alike = ([i for i, _ in model.similar_items(item, RETURN_LOOKALIKES + 1) if i != item]
                         [:RETURN_LOOKALIKES] if model.has_item(item) else [])
                out.update(alike)
                tally = product.setdefault(reason, [0, 0])
                tally[0] += 1
                tally[1] += len(alike)
            elif reason in FIT_RETURN_REASONS:
                fit[reason] = fit.get(reason, 0) + 1
        audit += [f"{n} return(s) {reason}: the item and {m} look-alike(s) left out"
                  for reason, (n, m) in sorted(product.items())]
        audit += [f"{n} return(s) {reason}: only the item left out, its look-alikes and category stay"
                  for reason, n in sorted(fit.items())]
        return out

    def _category(self, item_id: str | None, catalog: Catalog, model: Recommender) -> str | None:
        if item_id is None:
            return None
        item = catalog.get(item_id)
        return item.category if item is not None and item.category else model.item_category(item_id)

    def _admissible(self, cands: Sequence[_Candidate], catalog: Catalog, model: Recommender, q: Query,
                    exclude: set[str], interests: set[str], interested_items: set[str],
                    audit: list[str], *, declared: Sequence[str] = ()) -> set[str]:
        """Candidate ids that may be shown: not excluded, in stock, and allowed by their sensitivity (interest
        shown, or declared: an item inside a declared interest)."""
        ok: set[str] = set()
        refused = 0
        for c in cands:
            i = c.item_id
            if i in ok or i in exclude:
                continue
            item = catalog.get(i)
            if item is not None and item.in_stock is False:
                continue
            tier = self.tier(i, catalog, model)
            interested = c.basis == PERSONAL and (
                i in interested_items or (cat := self._category(i, catalog, model)) in interests
                or declared_category(cat, declared) is not None)
            # a non-personal list (popular, the page's look-alikes) is the same for whoever asks on the
            # channel: it holds no sensitive or life-event item at all
            if tier != Sensitivity.NONE and (c.basis != PERSONAL or not may_show(
                    tier, q.channel, q.logged_in, self.policy, interested=interested)):
                refused += 1
                continue
            ok.add(i)
        if refused:
            audit.append(f"{refused} sensitive or life-event candidate(s) left out on {q.channel}")
        return ok

    def _cap_sensitive(self, ranked: list[tuple[str, float]], catalog: Catalog, model: Recommender, n: int,
                       k: int, audit: list[str]) -> list[tuple[str, float]]:
        """The first `n` of `ranked` with at most `max_sensitive_share` of a k-item list (at least one)
        sensitive or life-event: a list made only of such items says more about the person than any one of
        them. Candidates past the cap move up, so a list is short only when the candidates run out."""
        most = max(1, math.floor(self.max_sensitive_share * k))
        out, tiered, capped = [], 0, 0
        for i, s in ranked:
            if len(out) >= n:
                break
            if self.tier(i, catalog, model) != Sensitivity.NONE:
                if tiered >= most:
                    capped += 1
                    continue
                tiered += 1
            out.append((i, s))
        if capped:
            audit.append(f"sensitive share capped: {capped} candidate(s) left out")
        return out

    # -- reasons ----------------------------------------------------------------------------------
    def _with_reasons(self, chosen: Sequence[tuple[str, float]], by_id: Mapping[str, _Candidate],
                      own: OnlineProfile | None, catalog: Catalog, model: Recommender, consent: ConsentState,
                      q: Query) -> list[Pick]:
        """One guard decision per distinct reason (items sharing a category share it)."""
        latest: dict[str, ProfileEntry] = {}  # category -> the newest consented entry in it
        if own is not None:
            for e in _newest_first([*own.cart_items, *own.recent_views, *own.purchases]):
                if e.category:
                    latest.setdefault(self._category(e.item_id, catalog, model) or e.category, e)
        declared = {str(s.category): s for s in declared_signals(own, q.channel) if s.category}  # needs consent
        ctx_signal = item_signal(VIEW, q.channel, q.context_item, catalog) if q.context_item else None
        cat_signal = Signal(VIEW, q.channel, category=q.context_category or (ctx_signal.category if ctx_signal else None))
        cache: dict[tuple[Any, ...], str] = {}
        picks = []
        for i, s in chosen:
            c = by_id[i]
            item_cat = self._category(i, catalog, model)
            if c.basis == PERSONAL:
                if c.backing is not None and self._category(c.backing.item_id, catalog, model) == item_cat:
                    entry, level_item = c.backing, True  # a look-alike of what was just viewed
                else:
                    entry, level_item = latest.get(item_cat) if item_cat else None, False
                told = declared_category(item_cat, tuple(declared))  # the guard weighs it with the behaviour
                key: tuple[Any, ...] = (PERSONAL, entry.item_id if entry and level_item else None,
                                        item_cat if entry else None, told)
                if key not in cache:
                    sig = () if entry is None else (item_signal(
                        entry.event_type, entry.channel, entry.item_id if level_item else None, catalog,
                        category=entry.category, ts=entry.ts),)
                    sig += (declared[told],) if told is not None else ()
                    cache[key] = guard(GuardRequest(RECOMMENDATION_REASON, q.channel, consent, sig,
                                                    logged_in=q.logged_in), self.policy).text
            else:
                subject = cat_signal if c.basis == POPULAR_CATEGORY else ctx_signal
                if c.basis == POPULAR_CATEGORY and c.category is not None:  # a fallback level of /similar_items
                    subject = Signal(VIEW, q.channel, category=c.category)
                key = (c.basis, q.context_item, cat_signal.category, c.category)
                if key not in cache:
                    cache[key] = guard(GuardRequest(RECOMMENDATION_REASON, q.channel, consent, (), basis=c.basis,
                                                    subject=subject, logged_in=q.logged_in), self.policy).text
            picks.append(Pick(i, s, c.basis, cache[key], catalog.get(i)))
        return picks
