"""MovieLens-100k as the spike needs it: ratings, item and user attributes, the two test protocols and
their validation carves, and `Interactions` (one indexed view of a training frame every generator reads).

The protocols are those of benchmarks/acc_recommendation.py, so figures are comparable with
benchmarks/RESULTS.md: the Recommenders protocol (75/25 stratified per item, seed 42; validation = the same
split applied to train, 1/8 held out, seeds 43-45) and the time split (global cut at the 75% quantile of
timestamps; validation = the last 25% of train by time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.schema import ITEM_ID, PROFILE_ID, TS
from training.evaluation import stratified_split

ML_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"
if not ML_DIR.exists():  # the scratch copy lives outside /work; the data does not move with it
    ML_DIR = Path("/work/shared/data/movielens-100k")
RATING = "rating"
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
DAY = 86_400.0


@dataclass(frozen=True)
class Dataset:
    """Ratings plus side information, indexed by string ids (as the product's events are)."""

    ratings: pd.DataFrame  # PROFILE_ID, ITEM_ID, RATING, TS
    items: pd.DataFrame  # index ITEM_ID; genre flags (GENRES), year
    users: pd.DataFrame  # index PROFILE_ID; age, gender_f, occupation (category codes)


def load_movielens(data_dir: Path = ML_DIR) -> Dataset:
    """u.data, u.item and u.user as frames; nothing else of the files is used."""
    r = pd.read_csv(data_dir / "u.data", sep="\t", names=[PROFILE_ID, ITEM_ID, RATING, "unix"])
    r[PROFILE_ID] = r[PROFILE_ID].astype(str)
    r[ITEM_ID] = r[ITEM_ID].astype(str)
    r[TS] = pd.to_datetime(r["unix"], unit="s", utc=True)
    cols = [ITEM_ID, "title", "release", "video", "url", *GENRES]
    it = pd.read_csv(data_dir / "u.item", sep="|", names=cols, encoding="latin-1")
    it[ITEM_ID] = it[ITEM_ID].astype(str)
    it["year"] = pd.to_datetime(it["release"], format="%d-%b-%Y", errors="coerce").dt.year.astype(float)
    items = it.set_index(ITEM_ID)[[*GENRES, "year"]].astype(float)
    us = pd.read_csv(data_dir / "u.user", sep="|", names=[PROFILE_ID, "age", "gender", "occupation", "zip"])
    us[PROFILE_ID] = us[PROFILE_ID].astype(str)
    users = pd.DataFrame({"age": us["age"].astype(float).to_numpy(),
                          "gender_f": (us["gender"] == "F").astype(float).to_numpy(),
                          "occupation": us["occupation"].astype("category").cat.codes.astype(float).to_numpy()},
                         index=pd.Index(us[PROFILE_ID], name=PROFILE_ID))
    return Dataset(r.drop(columns="unix"), items, users)


Split = tuple[pd.DataFrame, pd.DataFrame]


@dataclass(frozen=True)
class Protocol:
    """A test split and the validation carves that mirror it (the ranker learns on the carves only)."""

    name: str
    split: Callable[[pd.DataFrame], Split]
    carve: Callable[[pd.DataFrame], list[Split]]


def stratified_test(df: pd.DataFrame) -> Split:
    return stratified_split(df, 0.75, seed=42, filter_by="item")


def stratified_carves(train: pd.DataFrame, seeds: tuple[int, ...] = (43, 44, 45)) -> list[Split]:
    return [stratified_split(train, 0.875, seed=s, filter_by="item") for s in seeds]


def _time_cut(df: pd.DataFrame, q: float = 0.75) -> Split:
    cut = df[TS].quantile(q)
    return df.loc[df[TS] < cut], df.loc[df[TS] >= cut]


def time_test(df: pd.DataFrame) -> Split:
    return _time_cut(df)


def time_carves(train: pd.DataFrame) -> list[Split]:
    return [_time_cut(train)]


PROTOCOLS = {"stratified": Protocol("stratified", stratified_test, stratified_carves),
             "time_split": Protocol("time_split", time_test, time_carves)}


@dataclass(frozen=True)
class Interactions:
    """One training frame on fixed user/item indices (the whole catalog, so every fold shares columns).

    `now` is the training cutoff in epoch seconds: the latest timestamp seen; time features are measured from it
    (point in time: nothing after the frame's last event is known).
    """

    uidx: np.ndarray
    iidx: np.ndarray
    rating: np.ndarray
    ts: np.ndarray  # epoch seconds
    n_users: int
    n_items: int
    now: float

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, user_index: pd.Index, item_index: pd.Index) -> Interactions:
        ts = frame[TS].dt.as_unit("s").astype("int64").to_numpy().astype(float)  # pandas 3: unit varies
        return cls(user_index.get_indexer(frame[PROFILE_ID]), item_index.get_indexer(frame[ITEM_ID]),
                   frame[RATING].to_numpy(float), ts, len(user_index), len(item_index), float(ts.max()))

    def matrix(self, inputs: str = "binary") -> sp.csr_matrix:
        """Users x items; 'binary' (every rating a positive) or 'sqrt_rating' (sqrt(r / 3): a 5 counts more)."""
        w = np.ones(len(self.uidx)) if inputs == "binary" else np.sqrt(self.rating / 3.0)
        m = sp.csr_matrix((w.astype(np.float32), (self.uidx, self.iidx)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        return m

    def seen(self) -> sp.csr_matrix:
        return self.matrix("binary").astype(bool).tocsr()

    def known_users(self) -> np.ndarray:
        return np.unique(self.uidx)


def truth_matrix(frame: pd.DataFrame, user_index: pd.Index, item_index: pd.Index) -> sp.csr_matrix:
    """Held-out (user, item) pairs as a boolean users x items matrix (items outside the catalog dropped)."""
    u, i = user_index.get_indexer(frame[PROFILE_ID]), item_index.get_indexer(frame[ITEM_ID])
    ok = (u >= 0) & (i >= 0)
    m = sp.csr_matrix((np.ones(ok.sum(), bool), (u[ok], i[ok])), shape=(len(user_index), len(item_index)))
    m.sum_duplicates()
    return m
