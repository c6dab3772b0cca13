"""Next best action and batch scores from the store, the champions and consent (store-backed, no HTTP).

One place builds every decision input (`DecisionEngine._inputs`: consented profiles, consented feature
rows, model scores), so `/next_best_action` and `/scores` agree; consent acts on those inputs (without
`personalization` there are no scores and no action rests on the person's data); on an outbound channel
the action reserves a slot in the store's durable ledger (`serving.contact`), once per decision.
Every outbound decision is written to the store's decision log (`record_decision`), a holdout's too: the
action the same ranking and guard would have sent, with no slot reserved and nothing sent (`mirror report lift`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.catalog import Catalog
from features.schema import CUSTOMER_ID, EMAIL, PHONE, PROFILE_ID, PURCHASE, TRY_ON
from features.store import DecisionLog, OnlineProfile, ProfileStore
from serving import nba
from serving.contact import StoreContactLedger, customer_timezone, decision_id, decision_key
from serving.guard import (
    ITEMS,
    NBA_MESSAGE,
    SUGGESTIONS,
    ConsentState,
    ContactCheck,
    ContactContext,
    GuardDecision,
    GuardPolicy,
    GuardRequest,
    Sensitivity,
    Signal,
    check_contact,
    consent_from_flags,
    declared_level,
    guard,
)
from serving.inputs import consented_profile, item_signal, signals
from serving.models import model_feature_columns
from serving.recommend import Query, RecommendationPolicy, Recommender

logger = logging.getLogger("mirror.decisions")

#: Most cached customer scores (two models, so about half as many customers) before the cache restarts.
SCORE_CACHE_ENTRIES = 2_000_000
#: Column of `score`: the customer's best channel for the top action.
TOP_CHANNEL: str = "top_channel"
#: Why a customer gets no action at all when personalization is off.
NO_PERSONALIZATION: str = "personalization not granted"

# Columns of the batch path (`/scores` answers and segment export files carry exactly these, in order).
#: the identifier as asked (a whole-store export: the retailer's customer id, else the profile id)
SCORE_ID: str = "id"
#: the customer is in the campaign's holdout: nothing is sent to them (the measure of lift)
HOLDOUT: str = nba.HOLDOUT
#: the top action's channel is in the customer's quiet hours now: send at this time (ISO-8601, UTC)
SEND_AT: str = "send_at"
#: the guarded message text of the top action (`/next_best_action`'s `reason`), and its parameters
MESSAGE: str = "message"
MESSAGE_PARAMS: str = "params"
#: the decision's tone (`nba.tone_of`: apologetic, neutral, warm), the one every channel's message uses
TONE: str = "tone"
SCORE_COLUMNS: tuple[str, ...] = (SCORE_ID, CUSTOMER_ID, PROFILE_ID, nba.CHURN_PROBABILITY, nba.PURCHASE_PROPENSITY,
                                  HOLDOUT, nba.TOP_ACTION, TOP_CHANNEL, SEND_AT, TONE, MESSAGE, MESSAGE_PARAMS)
#: Identifiers a batch may name customers by (raw email and phone are hashed by the store).
BATCH_ID_KINDS: tuple[str, ...] = (PROFILE_ID, CUSTOMER_ID, EMAIL, PHONE)


def predict_proba(model: Any, features: pd.DataFrame) -> np.ndarray:
    """P(class 1) for each row, or NaN when the model is not loaded or fails on this input."""
    if model is None or not len(features):
        return np.full(len(features), np.nan)
    cols = [c for c in model_feature_columns(model) if c in features]
    try:
        return np.asarray(model.predict_proba(features[cols])[:, 1], dtype=float)
    except Exception:
        logger.exception("predict_proba failed; answering without this score")
        return np.full(len(features), np.nan)


def contact_context(ctx: nba.NBAContext, profile: OnlineProfile | None, **extra: Any) -> ContactContext:
    """The guard's ContactContext of a decision context. `purchases` (item -> latest purchase) holds the
    cart's items only: all the contact policy reads it for (a cart reminder for an item just bought)."""
    purchases: dict[str, datetime] = {}
    cart = {i.item_id for i in ctx.cart}
    # a reservation for pickup (waiting or picked up) counts as bought: no cart reminder for it
    for e in ((*profile.purchases, *profile.pickups) if profile is not None and cart else ()):
        if e.item_id in cart and (e.item_id not in purchases or e.ts > purchases[e.item_id]):
            purchases[e.item_id] = e.ts
    return ContactContext(profile_id=ctx.profile_id, purchases=purchases,
                          last_purchase_ts=_aware(ctx.last_purchase_ts), last_return_ts=_aware(ctx.last_return_ts),
                          last_negative_sentiment_ts=_aware(ctx.last_negative_sentiment_ts), **extra)


def _aware(t: Any) -> datetime | None:
    if t is None:
        return None
    if isinstance(t, datetime):
        return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(t), tz=UTC)


def customer_consent(flags: Mapping[str, bool], profile: OnlineProfile | None) -> ConsentState:
    """The one rule for a customer's consent state: their choices over the defaults, in their own time
    zone when their events told it."""
    state = consent_from_flags(flags, timezone=customer_timezone(profile))
    cap = declared_level(profile)  # how personal the customer wants it: a cap, never a raise
    return state if cap is None or cap >= state.level else dataclasses.replace(state, level=cap)


def contact_rule(policy: GuardPolicy, now: datetime, consent_of: Callable[[str], ConsentState],
                 profiles: Mapping[str, OnlineProfile | None],
                 passed: dict[str, ContactCheck] | None = None) -> nba.ContactRule:
    """The guard's contact policy (suppression, marketing consent; quiet hours defer, never refuse) as
    the one rule `/next_best_action` and `/scores` both apply to a ranked action on the customer's
    channel for it. No slot is reserved here. `passed` collects each profile's last allowed check (the
    ranking stops at the first allowed action, so it is the top action's: its `send_at`)."""
    contacts: dict[str, ContactContext] = {}

    def allowed(ctx: nba.NBAContext, action: nba.ScoredAction) -> bool:
        if action.name == nba.DO_NOTHING:
            return True
        contact = contacts.get(ctx.profile_id)
        if contact is None:
            contact = contacts[ctx.profile_id] = contact_context(ctx, profiles.get(ctx.profile_id))
        check = check_contact(action.channel or "web", action.name, now, consent_of(ctx.profile_id), policy, contact,
                              [i.item_id for i in ctx.cart])
        if passed is not None and check.allowed:
            passed[ctx.profile_id] = check
        return check.allowed

    return allowed


def _keyed(table: pd.DataFrame, take: Sequence[int], ids: Sequence[str], customer: Sequence[str | None]
           ) -> pd.DataFrame:
    """Rows `take` of a `score` table with the id asked and the customer id in front: `SCORE_COLUMNS`,
    the one shape of the batch path (`score_asked`, `score_store`)."""
    rows = table.iloc[list(take)].reset_index(drop=True)
    rows.insert(0, CUSTOMER_ID, pd.Series(list(customer), dtype=object))
    rows.insert(0, SCORE_ID, pd.Series(list(ids), dtype=object))
    return rows[list(SCORE_COLUMNS)]


def message_template(action: str, params: Mapping[str, Any]) -> str | None:
    """The guard's wording for an action's phase (post-purchase care's complements), None for its own."""
    if action == nba.POST_PURCHASE_CARE and params.get("content") == nba.COMPLEMENTS_CONTENT:
        return nba.COMPLEMENTS_TEMPLATE
    return None


#: Actions whose message rests only on the entries of their subject: (profile attribute, event type).
_SUBJECT_ENTRIES: dict[str, tuple[str, str]] = {nba.TRIED_ON_OFFER: ("recent_views", TRY_ON),
                                                 nba.POST_PURCHASE_CARE: ("purchases", PURCHASE)}


def action_signals(a: nba.ScoredAction, own: OnlineProfile | None, catalog: Catalog,
                   everything: Sequence[Signal]) -> tuple[Signal, ...]:
    """What a message may rest on. A try-on offer rests only on that item's try-on and post-purchase care only
    on that purchase, so the words are about the subject (and a try-on's store, time or size is no input at
    all); the other actions on the customer's recent signals (`everything`), of which the guard keeps, for a
    message about items (a cart or replenishment reminder), only those items' own (`guard.message_basis`)."""
    kind = _SUBJECT_ENTRIES.get(a.name)
    if kind is None:
        return tuple(everything)
    attr, etype = kind
    entries = [e for e in (getattr(own, attr) if own is not None else ()) if e.event_type == etype]  # newest first
    if a.params.get("content") != nba.COMPLEMENTS_CONTENT:  # complements go with the newest purchase
        subject = (list(a.params.get("item_ids") or ()) or [None])[0]
        entries = [e for e in entries if e.item_id == subject]
    return tuple(item_signal(e.event_type, e.channel, e.item_id, catalog, category=e.category) for e in entries[:1])


@dataclass(frozen=True)
class OfferedAction:
    action: str
    expected_value: float
    channel: str  # the channel asked for
    recommended_channel: str | None  # the customer's best channel for this action (may differ)
    params: Mapping[str, Any]
    message: str
    send_at: datetime | None = None
    decision_id: str | None = None
    tone: str = nba.NEUTRAL  # the decision's tone: the same on every channel asking in its window


@dataclass(frozen=True)
class NBAOutcome:
    profile_id: str
    personalized: bool
    holdout: bool
    decided_at: int
    actions: tuple[OfferedAction, ...]
    reason: str | None = None  # why nothing is offered (do_nothing)
    tone: str = nba.NEUTRAL


@dataclass(frozen=True)
class _Inputs:
    features: pd.DataFrame
    churn: np.ndarray
    propensity: np.ndarray
    contexts: list[nba.NBAContext]
    profiles: dict[str, OnlineProfile | None]  # consented views
    consents: dict[str, ConsentState]
    stored: dict[str, OnlineProfile | None]  # the store's profiles, as read once for this decision


class DecisionEngine:
    """`/next_best_action` and `/scores` over one store (see module doc)."""

    def __init__(self, store: ProfileStore, policy: GuardPolicy, recommendation: RecommendationPolicy,
                 config: nba.NBAConfig | None = None) -> None:
        self.store = store
        self.policy = policy
        self.recommendation = recommendation
        self.config = config or nba.NBAConfig()
        self.ledger = StoreContactLedger(store)
        #: the store's decision log, when it has one (an optional capability): without it decisions are made
        #: as usual but `mirror report lift` has nothing to read (said once, at start)
        self._decision_log: DecisionLog | None = store if isinstance(store, DecisionLog) else None
        if self._decision_log is None:
            logger.warning("this profile store keeps no decision log: lift reports stay empty")
        #: (model id, profile id) -> (hash of the feature row, P(class 1)): a customer's score is computed once per
        #: feature row (rows change on the customer's writes and once per feature bucket), so a site banner
        #: or a call-center screen asking per visit pays a dictionary lookup, not two model calls.
        self._scores: dict[tuple[int, str], tuple[int, float]] = {}
        self._scores_lock = threading.Lock()

    def _predict(self, model: Any, feats: pd.DataFrame) -> np.ndarray:
        """`predict_proba` through the score cache: only rows never scored (or changed) reach the model."""
        if model is None or not len(feats):
            return np.full(len(feats), np.nan)
        cols = [c for c in model_feature_columns(model) if c in feats]
        values = feats[cols].to_numpy(dtype=float, na_value=np.nan)
        keys = [hash(v.tobytes()) for v in values]  # a row's identity, in 8 bytes of memory
        pids = feats[PROFILE_ID].astype(str).tolist()
        out = np.empty(len(feats))
        miss: list[int] = []
        mid = id(model)
        with self._scores_lock:
            for j, (pid, key) in enumerate(zip(pids, keys, strict=True)):
                hit = self._scores.get((mid, pid))
                if hit is not None and hit[0] == key:
                    out[j] = hit[1]
                else:
                    miss.append(j)
        if miss:
            fresh = predict_proba(model, feats.iloc[miss])
            out[miss] = fresh
            with self._scores_lock:
                if len(self._scores) > SCORE_CACHE_ENTRIES:
                    self._scores.clear()
                for j, p in zip(miss, fresh.tolist(), strict=True):
                    if np.isfinite(p):
                        self._scores[(mid, pids[j])] = (keys[j], p)
        return out

    def forget_scores(self) -> None:
        """After a model reload: cached scores belong to the old models."""
        with self._scores_lock:
            self._scores.clear()

    def warm(self, churn_model: Any, purchase_model: Any, profile_ids: Sequence[str], chunk: int = 10_000) -> int:
        """Score every profile once, in batches (service start-up and each feature bucket)."""
        for i in range(0, len(profile_ids), chunk):
            feats = self.store.features_for(list(profile_ids[i:i + chunk]))
            self._predict(churn_model, feats)
            self._predict(purchase_model, feats)
        return len(profile_ids)

    def consents(self, profiles: Mapping[str, OnlineProfile | None]) -> dict[str, ConsentState]:
        """Each customer's consent, with their own time zone (one store read for the batch)."""
        flags = self.store.get_consents(list(profiles))
        return {pid: customer_consent(flags.get(pid, {}), p) for pid, p in profiles.items()}

    def _inputs(self, churn_model: Any, purchase_model: Any, pids: Sequence[str], *, now: datetime,
                campaign_id: str = "default", channel: str | None = None) -> _Inputs:
        stored = dict(zip(pids, self.store.get_profiles(list(pids)), strict=True))
        consents = self.consents(stored)
        views = {p: consented_profile(stored[p], consents[p]) for p in pids}
        feats = self.store.features_for(list(pids)) if len(pids) else pd.DataFrame({PROFILE_ID: []})
        have = set(feats[PROFILE_ID].astype(str)) if len(feats) else set()
        # no feature row yet (first events of the bucket): decided on the profile alone; unknown ones drop out
        missing = [p for p in pids if p not in have and stored[p] is not None]
        if missing:
            feats = pd.concat([feats, pd.DataFrame({PROFILE_ID: missing})], ignore_index=True)
        churn, prop = self._predict(churn_model, feats), self._predict(purchase_model, feats)
        rows = feats[PROFILE_ID].astype(str).tolist()
        off = np.array([not consents[p].personalization or p in missing for p in rows], dtype=bool)
        churn[off], prop[off] = np.nan, np.nan  # no personal data may be used: no score
        ctxs = nba.contexts_from_profiles([views.get(p) for p in rows], feats, churn, prop, now=now,
                                          config=self.config, campaign_id=campaign_id, channel=channel)
        return _Inputs(feats, churn, prop, ctxs, views, consents, stored)

    # -- batch ----------------------------------------------------------------------------------
    def score(self, churn_model: Any, purchase_model: Any, pids: Sequence[str], *, catalog: Catalog | None = None,
              recommender: Recommender | None = None, campaign: str = "default", messages: bool = True,
              now: datetime | None = None) -> pd.DataFrame:
        """Per known profile (unknown ones drop out): churn, propensity, holdout, and the top action (the
        same as `/next_best_action`'s first for `campaign` on the customer's own channel for it) with
        its guarded message, parameters and send time, vectorised but for the message.

        A preview: nothing is reserved in the contact ledger (asking twice changes nothing); the slot
        is taken when a message is decided through `/next_best_action`. The message is the guard's output
        for the same request `/next_best_action` makes (never a raw signal); cross-sell items are the
        customer's personal picks when `recommender` is given."""
        cols = [PROFILE_ID, nba.CHURN_PROBABILITY, nba.PURCHASE_PROPENSITY, HOLDOUT, nba.TOP_ACTION, TOP_CHANNEL,
                SEND_AT, TONE, MESSAGE, MESSAGE_PARAMS]
        if not len(pids):
            return pd.DataFrame({c: pd.Series([], dtype=float if c in (nba.CHURN_PROBABILITY, nba.PURCHASE_PROPENSITY)
                                              else bool if c == HOLDOUT else object) for c in cols})
        now = now or datetime.now(UTC)
        catalog = catalog if catalog is not None else Catalog.empty()
        x = self._inputs(churn_model, purchase_model, pids, now=now, campaign_id=campaign)
        checks: dict[str, ContactCheck] = {}
        rule = contact_rule(self.policy, now, x.consents.__getitem__, x.profiles, checks)
        decided = nba.decide_top_actions(x.contexts, self.config, allowed=rule)
        top = decided[nba.TOP_ACTION].to_numpy().copy()
        hold = decided[nba.HOLDOUT].to_numpy(dtype=bool).copy()
        rows = x.features[PROFILE_ID].astype(str).tolist()
        off = np.array([not x.consents[p].personalization for p in rows], dtype=bool)
        top[off], hold[off] = nba.DO_NOTHING, False  # as /next_best_action: no decision rests on them
        n = len(rows)
        channel: list[str | None] = [None] * n
        send_at: list[str | None] = [None] * n
        message: list[str | None] = [None] * n
        params: list[dict[str, Any] | None] = [None] * n
        tone = [nba.tone_of(ctx, self.config) for ctx in x.contexts]  # one per decision, as /next_best_action's
        for j in np.flatnonzero(top != nba.DO_NOTHING):
            a, ctx, pid = nba.ACTION_BY_NAME[top[j]], x.contexts[j], rows[j]
            ch = channel[j] = nba.choose_channel(a, ctx, self.config)
            deferred = checks[pid].send_at if pid in checks else None
            send_at[j] = deferred.isoformat() if deferred else None
            if ch is None or not messages:
                continue
            consent, own = x.consents[pid], x.profiles[pid]
            if a.name == nba.CROSS_SELL and recommender is not None:
                ctx = dataclasses.replace(ctx, candidate_items=self._candidates(recommender, catalog, x.stored[pid],
                                                                                consent, ch, now))
            elif a.name == nba.POST_PURCHASE_CARE and recommender is not None:
                ctx = dataclasses.replace(ctx, complement_items=self._complements(ctx, own, catalog, recommender))
            sa = nba.ScoredAction(a.name, 0.0, ch, a.params(ctx, self.config))
            d = self._guard_message(a.name, sa.params, ch, consent, action_signals(sa, own, catalog,
                                                                                  tuple(signals(own, catalog))),
                                    catalog, now, contact_context(ctx, own), tone=tone[j])
            if d.allowed:  # the contact rule above already let it through: the guard agrees but for edge cases
                message[j], params[j] = d.text, dict(d.params)
        return pd.DataFrame({PROFILE_ID: rows, nba.CHURN_PROBABILITY: x.churn, nba.PURCHASE_PROPENSITY: x.propensity,
                             HOLDOUT: hold, nba.TOP_ACTION: top, TOP_CHANNEL: pd.Series(channel, dtype=object),
                             SEND_AT: pd.Series(send_at, dtype=object), TONE: pd.Series(tone, dtype=object),
                             MESSAGE: pd.Series(message, dtype=object),
                             MESSAGE_PARAMS: pd.Series(params, dtype=object)})

    def score_asked(self, churn_model: Any, purchase_model: Any, asked: Sequence[tuple[str, str]],
                    **options: Any) -> tuple[pd.DataFrame, list[str]]:
        """`score` for customers named by the retailer: `asked` is (kind, value) pairs, kind one of
        `BATCH_ID_KINDS`. Returns (rows of `SCORE_COLUMNS` in the order asked, the values the store does
        not know, in the order asked). A row's `customer_id` is the one asked, else the profile's own
        (the smallest when it holds several)."""
        resolved: list[str | None] = [None] * len(asked)
        by_kind: dict[str, list[int]] = {}
        for i, (kind, _) in enumerate(asked):
            if kind not in BATCH_ID_KINDS:
                raise ValueError(f"unknown identifier kind {kind!r} (expected one of {', '.join(BATCH_ID_KINDS)})")
            by_kind.setdefault(kind, []).append(i)
        for kind, where in by_kind.items():
            values = [asked[i][1] for i in where]
            found = dict(zip(values, values, strict=True)) if kind == PROFILE_ID else \
                self.store.resolve_many(kind, values)
            for i, v in zip(where, values, strict=True):
                resolved[i] = found.get(v)
        table = self.score(churn_model, purchase_model, sorted({p for p in resolved if p}), **options)
        pos = {p: i for i, p in enumerate(table[PROFILE_ID])}
        keep = [i for i, p in enumerate(resolved) if p in pos]
        unknown = [asked[i][1] for i, p in enumerate(resolved) if p not in pos]
        need = sorted({resolved[i] for i in keep if asked[i][0] != CUSTOMER_ID})  # type: ignore[type-var]
        own = self.store.identifiers_of(need) if need else {}
        customer = [asked[i][1] if asked[i][0] == CUSTOMER_ID else next(iter(own.get(resolved[i], ())), None)
                    for i in keep]
        return _keyed(table, [pos[resolved[i]] for i in keep], [asked[i][1] for i in keep],  # type: ignore[index]
                      customer), unknown

    def score_store(self, churn_model: Any, purchase_model: Any, pids: Sequence[str], **options: Any) -> pd.DataFrame:
        """`score` for a chunk of the whole store, keyed by the retailer's ids: one row per customer id a
        profile holds (a person known by two accounts has two rows, one `profile_id`), one row with no
        customer id (`id` = the profile id) for a profile that has none. Rows of `SCORE_COLUMNS`."""
        table = self.score(churn_model, purchase_model, pids, **options)
        own = self.store.identifiers_of(list(table[PROFILE_ID])) if len(table) else {}
        take, ids, customer = [], [], []
        for i, pid in enumerate(table[PROFILE_ID]):
            for c in own.get(pid) or (None,):
                take.append(i)
                ids.append(c if c is not None else pid)
                customer.append(c)
        return _keyed(table, take, ids, customer)

    # -- one customer ---------------------------------------------------------------------------------
    def next_best_action(self, champions: Any, catalog: Catalog, pid: str, *, channel: str, campaign: str,
                         now: datetime) -> NBAOutcome:
        x = self._inputs(champions.churn, champions.purchase, [pid], now=now, campaign_id=campaign, channel=channel)
        consent, own = x.consents[pid], x.profiles[pid]
        bucket = nba.time_bucket(now, self.config.window_s)
        if not consent.personalization:
            return NBAOutcome(pid, False, False, bucket, (), NO_PERSONALIZATION)
        ctx = x.contexts[0]
        ctx = dataclasses.replace(ctx, candidate_items=self._candidates(champions.recommender, catalog, x.stored[pid],
                                                                        consent, channel, now),
                                  complement_items=self._complements(ctx, own, catalog, champions.recommender))
        decision = nba.decide_actions(ctx, self.config)
        tone = decision.tone
        outbound = channel in self.policy.outbound_channels
        holdout = decision.holdout
        if holdout and not outbound:
            return NBAOutcome(pid, True, True, bucket, (), "holdout", tone)
        if holdout:  # the decision log records what would have been sent: same ranking and guard, no slot
            decision = nba.decide_actions(ctx, dataclasses.replace(self.config, holdout_share=0.0))
        sigs = tuple(signals(own, catalog))
        offered: list[OfferedAction] = []
        refusal: str | None = None
        for a in decision.actions:
            if a.name == nba.DO_NOTHING:
                continue
            if channel not in nba.ACTION_CHANNELS[a.name]:
                refusal = refusal or f"{a.name} is not offered on {channel}"
                continue
            key = decision_key(campaign, bucket, a.name)
            contact = contact_context(ctx, own, ledger=self.ledger if outbound and not holdout else None, key=key)
            d = self._guard_message(a.name, a.params, channel, consent, action_signals(a, own, catalog, sigs), catalog,
                                    now, contact, tone=tone)
            if not d.allowed:
                refusal = d.suppressed_reason
                continue
            offered.append(OfferedAction(a.name, a.expected_value, channel, a.channel, dict(d.params), d.text,
                                         d.send_at, decision_id(pid, channel, key), tone))
            if outbound:  # one message per decision: one slot
                break
        if outbound and offered:
            self._log_decision(champions, offered[0], pid, campaign, holdout, now)
        if holdout:
            return NBAOutcome(pid, True, True, bucket, (), "holdout", tone)
        return NBAOutcome(pid, True, False, bucket, tuple(offered), None if offered else refusal, tone)

    def _complements(self, ctx: nba.NBAContext, own: OnlineProfile | None, catalog: Catalog,
                     rec: Recommender) -> tuple[nba.CandidateItem, ...]:
        """What goes with the purchase in its complements window: the recommender's complements that may be
        sent anywhere (no sensitive or life-event item), in stock, never bought or returned."""
        bought = ctx.complements_item
        if bought is None or not rec.has_item(bought.item_id):
            return ()
        had = {e.item_id for e in ((*own.purchases, *own.returns) if own is not None else ())}
        out = []
        for i, score in rec.complements(bought.item_id, self.config.max_message_items + 10):
            item = catalog.get(i)
            if i in had or (item is not None and item.in_stock is False) or \
                    self.recommendation.tier(i, catalog, rec) != Sensitivity.NONE:
                continue
            out.append(nba.CandidateItem(i, score, item.category if item and item.category else rec.item_category(i)))
        return tuple(out[: self.config.max_message_items])

    def _log_decision(self, champions: Any, offer: OfferedAction, pid: str, campaign: str, holdout: bool,
                      now: datetime) -> None:
        """Every outbound decision goes into the store's decision log, a holdout's too (the action it would
        have been sent), so `mirror report lift` compares treated with held-out customers."""
        if self._decision_log is None:
            return
        status = getattr(champions, "status", None) or {}
        self._decision_log.record_decision(offer.decision_id or "", pid, campaign, offer.action, offer.channel, holdout, now,
                                   {name: s.version for name, s in status.items()})

    def _candidates(self, rec: Recommender, catalog: Catalog, stored: OnlineProfile | None, consent: ConsentState,
                    channel: str, now: datetime) -> tuple[nba.CandidateItem, ...]:
        """Cross-sell candidates: the customer's personal picks on the channel (one rule for the NBA and
        the batch path, so both messages name the same items)."""
        picks = self.recommendation.recommend(rec, catalog, stored, consent,
                                              Query(channel=channel, k=self.config.max_message_items + 2, now=now,
                                                    logged_in=True)).items
        return tuple(nba.CandidateItem(p.item_id, p.score, p.item.category if p.item else rec.item_category(p.item_id))
                     for p in picks if p.basis == "personal")

    def _guard_message(self, action: str, params: Mapping[str, Any], channel: str, consent: ConsentState,
                       sigs: Sequence[Any], catalog: Catalog, now: datetime, contact: ContactContext, *,
                       tone: str = nba.NEUTRAL) -> GuardDecision:
        """The guard's decision on one action's message (text in the decision's `tone`, parameters with
        catalog item records, send time): the same request for `/next_best_action` and the batch path."""
        full = {**params, ITEMS: self._item_records(params.get("item_ids") or (), catalog)}
        if nba.SUGGESTED_ITEM_IDS in params:
            full[SUGGESTIONS] = self._item_records(params[nba.SUGGESTED_ITEM_IDS] or (), catalog, judged=True)
        return guard(GuardRequest(NBA_MESSAGE, channel, consent, sigs, action=action, params=full, now=now,
                                  logged_in=True, context=contact, tone=tone, template=message_template(action, params)),
                     self.policy)

    @staticmethod
    def _item_records(ids: Sequence[str], catalog: Catalog, *, judged: bool = False) -> list[dict[str, Any]]:
        """Items as catalog records (the guard keeps those it may show). `judged`: suggestions also carry what
        the guard judges them by (category, brand, the catalog's sensitive flag); it never passes those on."""
        out = []
        for i in ids:
            item = catalog.get(i)
            rec: dict[str, Any] = {"item_id": i}
            if item is not None:
                rec.update({k: v for k, v in (("name", item.name), ("price", item.price), ("currency", item.currency),
                                              ("url", item.url), ("image_url", item.image_url)) if v is not None})
                if judged:
                    rec.update(category=item.category, brand=item.brand, sensitive=bool(item.sensitive))
            out.append(rec)
        return out
