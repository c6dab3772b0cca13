"""Next best action and batch scores from the store, the champions and consent (store-backed, no HTTP).

One place builds every decision input (`DecisionEngine._inputs`: consented profiles, consented feature
rows, model scores), so `/next_best_action` and `/scores` agree; consent acts on those inputs (without
`personalization` there are no scores and no action rests on the person's data); on an outbound channel
the action reserves a slot in the store's durable ledger (`serving.contact`), once per decision.
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
from features.schema import PROFILE_ID
from features.store import OnlineProfile, ProfileStore
from serving import nba
from serving.contact import StoreContactLedger, customer_timezone, decision_id, decision_key
from serving.guard import (
    ITEMS,
    NBA_MESSAGE,
    ConsentState,
    ContactContext,
    GuardPolicy,
    GuardRequest,
    check_contact,
    consent_from_flags,
    guard,
)
from serving.inputs import consented_profile, signals
from serving.models import model_feature_columns
from serving.recommend import Query, RecommendationPolicy, Recommender

logger = logging.getLogger("mirror.decisions")

#: Most cached customer scores (two models, so about half as many customers) before the cache restarts.
SCORE_CACHE_ENTRIES = 2_000_000
#: Column of `score`: the customer's best channel for the top action.
TOP_CHANNEL: str = "top_channel"
#: Why a customer gets no action at all when personalization is off.
NO_PERSONALIZATION: str = "personalization not granted"


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
    for e in (profile.purchases if profile is not None and cart else ()):
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
    return consent_from_flags(flags, timezone=customer_timezone(profile))


def contact_rule(policy: GuardPolicy, now: datetime, consent_of: Callable[[str], ConsentState],
                 profiles: Mapping[str, OnlineProfile | None]) -> nba.ContactRule:
    """The guard's contact policy (suppression, marketing consent; quiet hours defer, never refuse) as
    the one rule `/next_best_action` and `/scores` both apply to a ranked action on the customer's
    channel for it. No slot is reserved here."""
    contacts: dict[str, ContactContext] = {}

    def allowed(ctx: nba.NBAContext, action: nba.ScoredAction) -> bool:
        if action.name == nba.DO_NOTHING:
            return True
        contact = contacts.get(ctx.profile_id)
        if contact is None:
            contact = contacts[ctx.profile_id] = contact_context(ctx, profiles.get(ctx.profile_id))
        return check_contact(action.channel or "web", action.name, now, consent_of(ctx.profile_id), policy, contact,
                             [i.item_id for i in ctx.cart]).allowed

    return allowed


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


@dataclass(frozen=True)
class NBAOutcome:
    profile_id: str
    personalized: bool
    holdout: bool
    decided_at: int
    actions: tuple[OfferedAction, ...]
    reason: str | None = None  # why nothing is offered (do_nothing)


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
    def score(self, churn_model: Any, purchase_model: Any, pids: Sequence[str], *,
              now: datetime | None = None) -> pd.DataFrame:
        """Churn, propensity and top action (the same as `/next_best_action`'s first for the default
        campaign on the customer's own channel) per profile, vectorised."""
        cols = [PROFILE_ID, nba.CHURN_PROBABILITY, nba.PURCHASE_PROPENSITY, nba.TOP_ACTION, TOP_CHANNEL]
        if not len(pids):
            return pd.DataFrame({c: [] for c in cols})
        now = now or datetime.now(UTC)
        x = self._inputs(churn_model, purchase_model, pids, now=now)
        rule = contact_rule(self.policy, now, x.consents.__getitem__, x.profiles)
        top = nba.decide_top_actions(x.contexts, self.config, allowed=rule)[nba.TOP_ACTION].to_numpy().copy()
        rows = x.features[PROFILE_ID].astype(str).tolist()
        top[[not x.consents[p].personalization for p in rows]] = nba.DO_NOTHING
        channel = [nba.choose_channel(nba.ACTION_BY_NAME[a], ctx, self.config) if a != nba.DO_NOTHING else None
                   for a, ctx in zip(top, x.contexts, strict=True)]
        return pd.DataFrame({PROFILE_ID: rows, nba.CHURN_PROBABILITY: x.churn, nba.PURCHASE_PROPENSITY: x.propensity,
                             nba.TOP_ACTION: top, TOP_CHANNEL: pd.Series(channel, dtype=object)})

    # -- one customer ---------------------------------------------------------------------------------
    def next_best_action(self, champions: Any, catalog: Catalog, pid: str, *, channel: str, campaign: str,
                         now: datetime) -> NBAOutcome:
        x = self._inputs(champions.churn, champions.purchase, [pid], now=now, campaign_id=campaign, channel=channel)
        consent, own = x.consents[pid], x.profiles[pid]
        bucket = nba.time_bucket(now, self.config.window_s)
        if not consent.personalization:
            return NBAOutcome(pid, False, False, bucket, (), NO_PERSONALIZATION)
        ctx = x.contexts[0]
        rec: Recommender = champions.recommender
        picks = self.recommendation.recommend(rec, catalog, x.stored[pid], consent,
                                              Query(channel=channel, k=self.config.max_message_items + 2, now=now,
                                                    logged_in=True)).items
        ctx = dataclasses.replace(ctx, candidate_items=tuple(
            nba.CandidateItem(p.item_id, p.score, p.item.category if p.item else rec.item_category(p.item_id))
            for p in picks if p.basis == "personal"))
        decision = nba.decide_actions(ctx, self.config)
        if decision.holdout:
            return NBAOutcome(pid, True, True, bucket, (), "holdout")
        outbound = channel in self.policy.outbound_channels
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
            contact = contact_context(ctx, own, ledger=self.ledger if outbound else None, key=key)
            params = {**a.params, ITEMS: self._item_records(a.params, catalog)}
            d = guard(GuardRequest(NBA_MESSAGE, channel, consent, sigs, action=a.name, params=params, now=now,
                                   logged_in=True, context=contact), self.policy)
            if not d.allowed:
                refusal = d.suppressed_reason
                continue
            offered.append(OfferedAction(a.name, a.expected_value, channel, a.channel, dict(d.params), d.text,
                                         d.send_at, decision_id(pid, channel, key)))
            if outbound:  # one message per decision: one slot
                break
        return NBAOutcome(pid, True, False, bucket, tuple(offered), None if offered else refusal)

    @staticmethod
    def _item_records(params: Mapping[str, Any], catalog: Catalog) -> list[dict[str, Any]]:
        """The action's items as catalog records (the guard keeps those it may show)."""
        out = []
        for i in params.get("item_ids") or ():
            item = catalog.get(i)
            rec: dict[str, Any] = {"item_id": i}
            if item is not None:
                rec.update({k: v for k, v in (("name", item.name), ("price", item.price), ("currency", item.currency),
                                              ("url", item.url), ("image_url", item.image_url)) if v is not None})
            out.append(rec)
        return out
