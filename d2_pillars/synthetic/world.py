"""A synthetic driving world (:class:`World`): one scene, a gently curving road, an ego vehicle
driving along it, annotated objects of every detection class (moving along lanes and sidewalks,
or parked / standing) and unannotated background boxes (buildings, poles).

Every pose is a closed-form function of time, so annotations, sweeps and keyframes agree at any
timestamp. Where the ego starts, a site of parked / standing objects holds every kind of
``WorldSpec.guaranteed_kinds``, so that each scene has every class of its format close to the
ego in its first keyframes. This module knows nothing about dataset formats (:mod:`.writer`) or
the sensor (:mod:`.lidar`).

Frames: the world frame is the dataset's global frame (metres, z up). Boxes are ``(centre (3,),
wlh (3,), yaw)`` with the geometric centre, ``wlh = [w, l, h]`` as in nuScenes/Lyft (``l`` along
the heading, the box frame's +x) and yaw about +z. Sizes are kept at millimetre resolution so
that the boxes written to the annotation tables are exactly the boxes that bound the shapes the
rays were cast against.

It is one concern (the scene's layout and the objects' motion) and is kept whole although it is
longer than the others: the object kinds, the road, the guaranteed site and the traffic share the
same per-object rows and random stream.
"""

import dataclasses
import math
import numpy as np
from typing import Dict, Optional, Sequence, Tuple

from .geometry import quaternion_from_ypr

__all__ = [
    "ObjectKind",
    "OBJECT_KINDS",
    "KIND_NAMES",
    "MOVING",
    "STOPPED",
    "PARKED",
    "STANDING",
    "SITTING",
    "STATIC",
    "WorldSpec",
    "World",
    "build_world",
    "select_near",
]


@dataclasses.dataclass(frozen=True)
class ObjectKind:
    """A kind of object: mean size ``[w, l, h]`` (m, ``l`` along the heading), its spread, the
    mean LiDAR intensity of its returns (0-255) and its shape. Background kinds are not annotated.

    ``front_step = (f, g)``: the front ``f * l`` of the box (the end its heading points to) rises
    only to ``g * h`` above the bottom, like a car's hood or a truck's cab in front of its higher
    cargo box, so that the LiDAR sees which end is the front; ``(0, 1)``: a plain cuboid. Either
    way the annotated box is the whole cuboid, which bounds the shape.
    """

    name: str
    wlh: Tuple[float, float, float]
    wlh_std: Tuple[float, float, float]
    reflectivity: float
    annotated: bool = True
    front_step: Tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        f, g = self.front_step
        if not (0.0 <= f < 1.0 and 0.0 < g <= 1.0):
            raise ValueError(f"ObjectKind.front_step needs 0 <= f < 1 and 0 < g <= 1, got {self}")


# Sizes: close to the nuScenes class means (barrier: long side is w, as annotated in nuScenes).
# Front steps: a car's hood (about 1.15 m long, 0.95 m high), a truck's or construction
# vehicle's cab (lower than the cargo box / the machinery behind it), a van-like emergency
# vehicle's short hood; buses, trailers, two-wheelers, people and things are plain cuboids.
OBJECT_KINDS: Dict[str, ObjectKind] = {
    k.name: k
    for k in (
        ObjectKind("car", (1.95, 4.62, 1.73), (0.10, 0.30, 0.15), 30.0, front_step=(0.25, 0.55)),
        ObjectKind("truck", (2.51, 6.93, 2.84), (0.15, 1.00, 0.35), 35.0, front_step=(0.3, 0.75)),
        ObjectKind("bus", (2.94, 10.50, 3.47), (0.08, 1.00, 0.15), 40.0),
        ObjectKind("trailer", (2.90, 12.29, 3.87), (0.08, 1.50, 0.25), 35.0),
        ObjectKind(
            "construction_vehicle",
            (2.73, 6.37, 3.19),
            (0.15, 0.80, 0.30),
            45.0,
            front_step=(0.35, 0.6),
        ),
        ObjectKind("pedestrian", (0.67, 0.73, 1.77), (0.07, 0.08, 0.10), 12.0),
        ObjectKind("motorcycle", (0.77, 2.11, 1.47), (0.06, 0.12, 0.08), 25.0),
        ObjectKind("bicycle", (0.60, 1.70, 1.28), (0.05, 0.10, 0.07), 20.0),
        ObjectKind("traffic_cone", (0.41, 0.41, 1.07), (0.04, 0.04, 0.10), 90.0),
        ObjectKind("barrier", (2.49, 0.48, 0.98), (0.15, 0.05, 0.05), 60.0),
        ObjectKind("animal", (0.36, 0.80, 0.65), (0.05, 0.12, 0.10), 10.0),
        ObjectKind("pushable_pullable", (0.62, 0.80, 1.05), (0.08, 0.10, 0.10), 25.0),
        ObjectKind(
            "emergency_vehicle", (2.05, 5.00, 1.95), (0.08, 0.25, 0.10), 50.0, front_step=(0.2, 0.6)
        ),
        ObjectKind("building", (10.0, 15.0, 10.0), (0.0, 0.0, 0.0), 15.0, annotated=False),
        ObjectKind("pole", (0.35, 0.35, 6.0), (0.05, 0.05, 1.0), 40.0, annotated=False),
    )
}
KIND_NAMES: Tuple[str, ...] = tuple(OBJECT_KINDS)
_KIND_INDEX = {n: i for i, n in enumerate(KIND_NAMES)}
_REFLECTIVITY = np.array([OBJECT_KINDS[n].reflectivity for n in KIND_NAMES], np.float32)
_FRONT_STEP = np.array([OBJECT_KINDS[n].front_step for n in KIND_NAMES], np.float64)
GROUND_REFLECTIVITY = 8.0

# Object states (decide the attributes written by the dataset writers).
MOVING, STOPPED, PARKED, STANDING, SITTING, STATIC = range(6)


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """What a scene contains. Mixes are ``{kind: weight}``; a kind missing from a mix never appears
    there. Lateral offsets are from the road centreline (left positive); the ego drives in the lane
    at ``-1.75`` m in the direction of increasing arc length."""

    ground_z_range: Tuple[float, float] = (0.0, 0.0)
    ego_roll_pitch_deg: float = 0.5
    ego_speed_range: Tuple[float, float] = (2.0, 10.0)
    ego_stationary_prob: float = 0.1
    max_curvature: float = 0.005
    lane_mix: Dict[str, float] = dataclasses.field(
        default_factory=lambda: {
            "car": 0.78,
            "truck": 0.1,
            "bus": 0.05,
            "motorcycle": 0.05,
            "emergency_vehicle": 0.02,
        }
    )
    cycle_mix: Dict[str, float] = dataclasses.field(
        default_factory=lambda: {"bicycle": 0.7, "motorcycle": 0.3}
    )
    parking_mix: Dict[str, float] = dataclasses.field(
        default_factory=lambda: {
            "car": 0.78,
            "truck": 0.07,
            "trailer": 0.04,
            "construction_vehicle": 0.03,
            "emergency_vehicle": 0.02,
            "bicycle": 0.03,
            "motorcycle": 0.03,
        }
    )
    work_zone_mix: Dict[str, float] = dataclasses.field(
        default_factory=lambda: {"barrier": 0.7, "traffic_cone": 0.3}
    )
    work_zone_prob: float = 0.3
    walker_mix: Dict[str, float] = dataclasses.field(
        default_factory=lambda: {"pedestrian": 0.97, "animal": 0.03}
    )
    sidewalk_static_mix: Dict[str, float] = dataclasses.field(
        default_factory=lambda: {
            "pedestrian": 0.6,
            "bicycle": 0.15,
            "traffic_cone": 0.1,
            "pushable_pullable": 0.1,
            "animal": 0.05,
        }
    )
    annotation_radius: float = 60.0
    # One of each of these kinds is parked / standing beside the road where the ego starts (see
    # _guaranteed_site), so that every scene holds every detection class of the format close to
    # the ego in its first keyframes, whatever the seed.
    guaranteed_kinds: Tuple[str, ...] = ()


def _sample_kinds(rng, mix: Dict[str, float], n: int) -> np.ndarray:
    names = [k for k, w in mix.items() if w > 0]
    if not names or n == 0:
        return np.zeros(0, np.int64)
    p = np.array([mix[k] for k in names], np.float64)
    idx = rng.choice(len(names), size=n, p=p / p.sum())
    return np.array([_KIND_INDEX[k] for k in names], np.int64)[idx]


def _sample_wlh(rng, kinds: np.ndarray) -> np.ndarray:
    mean = np.array([OBJECT_KINDS[KIND_NAMES[k]].wlh for k in kinds], np.float64).reshape(-1, 3)
    std = np.array([OBJECT_KINDS[KIND_NAMES[k]].wlh_std for k in kinds], np.float64).reshape(-1, 3)
    wlh = mean + std * np.clip(rng.standard_normal(mean.shape), -2.0, 2.0)
    return np.round(np.maximum(wlh, 0.1), 3)


@dataclasses.dataclass
class _Rows:
    """Objects being collected, one array per field (see :class:`World`)."""

    fields: Dict[str, list] = dataclasses.field(
        default_factory=lambda: {k: [] for k in _OBJECT_FIELDS}
    )

    def add(self, **kw):
        n = len(kw["kind"])
        for k in _OBJECT_FIELDS:
            self.fields[k].append(
                np.broadcast_to(np.asarray(kw[k]), (n,) + np.shape(kw[k])[1:]).copy()
            )

    def arrays(self):
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.fields.items()}


_OBJECT_FIELDS = ("kind", "wlh", "s0", "lateral", "direction", "speed", "yaw_offset", "state")


class World:
    """One scene: road, ego motion and objects; all poses are functions of time ``t`` (s).

    Objects move along the road: at time ``t`` object ``i`` is at arc length
    ``s0[i] + direction[i] * speed[i] * t``, offset ``lateral[i]`` to the left of the centreline,
    with heading ``road_heading + yaw_offset[i]``. Per-object arrays (N,): ``kind`` (index into
    :data:`KIND_NAMES`), ``wlh`` (N, 3), ``s0``, ``lateral``, ``direction`` (+-1), ``speed``
    (m/s), ``yaw_offset``, ``state`` (MOVING, ...), ``annotated``, ``front_step`` (N, 2) (the
    kind's :attr:`ObjectKind.front_step`, for :meth:`LidarSimulator.scan`).
    """

    def __init__(
        self,
        *,
        ground_z,
        origin,
        heading0,
        curv_amp,
        curv_period,
        curv_phase,
        s_range,
        ego_times,
        ego_s,
        ego_lateral,
        ego_roll_pitch,
        objects,
    ):
        self.ground_z = float(ground_z)
        self._origin = np.asarray(origin, np.float64)
        self._h0, self._ka, self._kp, self._kphi = heading0, curv_amp, curv_period, curv_phase
        s = np.arange(s_range[0], s_range[1] + 0.25, 0.25)
        th = self.road_heading(s)
        step = np.stack([np.cos(th), np.sin(th)], 1)
        seg = 0.5 * (step[1:] + step[:-1]) * 0.25
        xy = np.concatenate([np.zeros((1, 2)), np.cumsum(seg, 0)], 0)
        xy -= np.array([np.interp(0.0, s, xy[:, 0]), np.interp(0.0, s, xy[:, 1])])
        self._s, self._xy = s, xy + self._origin
        self._ego_t, self._ego_s, self.ego_lateral = ego_times, ego_s, ego_lateral
        # (roll_amp, roll_period, roll_phase, pitch_amp, pitch_period, pitch_phase)
        self._rp = ego_roll_pitch
        for k, v in objects.items():
            setattr(self, k, v)
        self.kind = self.kind.astype(np.int64)
        self.state = self.state.astype(np.int64)
        self.annotated = np.array([OBJECT_KINDS[KIND_NAMES[k]].annotated for k in self.kind], bool)
        self.front_step = _FRONT_STEP[self.kind]

    def __len__(self):
        return len(self.kind)

    def road_heading(self, s):
        if self._ka == 0:
            return np.full(np.shape(s), self._h0)
        w = 2 * math.pi / self._kp
        return self._h0 - self._ka / w * (
            np.cos(w * np.asarray(s) + self._kphi) - math.cos(self._kphi)
        )

    def road_pose(self, s, lateral):
        """Positions (..., 2) and headings (...) at arc length ``s``, ``lateral`` m to the left."""
        s = np.asarray(s, np.float64)
        if s.size and (s.min() < self._s[0] or s.max() > self._s[-1]):
            raise ValueError("synthetic world: arc length outside the generated road")
        th = self.road_heading(s)
        x = np.interp(s, self._s, self._xy[:, 0]) - lateral * np.sin(th)
        y = np.interp(s, self._s, self._xy[:, 1]) + lateral * np.cos(th)
        return np.stack([x, y], -1), th

    def ego_pose(self, t) -> Tuple[np.ndarray, np.ndarray]:
        """Ego translations (T, 3) and quaternions (T, 4) at times ``t`` (T,)."""
        t = np.atleast_1d(np.asarray(t, np.float64))
        s = np.interp(t, self._ego_t, self._ego_s)
        xy, yaw = self.road_pose(s, self.ego_lateral)
        ra, rp, rphi, pa, pp, pphi = self._rp
        roll = ra * np.sin(2 * math.pi * t / rp + rphi)
        pitch = pa * np.sin(2 * math.pi * t / pp + pphi)
        trans = np.concatenate([xy, np.full((len(t), 1), self.ground_z)], 1)
        return trans, quaternion_from_ypr(yaw, pitch, roll)

    def boxes_at(self, t: float) -> Tuple[np.ndarray, np.ndarray]:
        """Centres (N, 3) and yaws (N,) of every object at time ``t``; sizes are ``self.wlh``."""
        s = self.s0 + self.direction * self.speed * t
        xy, th = self.road_pose(s, self.lateral)
        z = self.ground_z + 0.5 * self.wlh[:, 2]
        yaw = (th + self.yaw_offset + math.pi) % (2 * math.pi) - math.pi
        return np.concatenate([xy, z[:, None]], 1), yaw

    def reflectivity(self, hit: np.ndarray, box_index: np.ndarray) -> np.ndarray:
        """Mean intensity per ray; ``hit`` indexes the box subset ``box_index`` (-1: ground)."""
        table = np.append(_REFLECTIVITY[self.kind[box_index]], np.float32(GROUND_REFLECTIVITY))
        # -1 (ground) reads the last entry; -2 (no return) reads any entry and is dropped later.
        return table[hit]


def _row(
    rng,
    s_lo,
    s_hi,
    kinds,
    gap,
    along,
    lateral_of,
    *,
    direction=1.0,
    speed=0.0,
    yaw_offset=0.0,
    state=STATIC,
    side=1.0,
    max_curvature=0.0,
    wlh=None,
):
    """Objects in a row along the road between arc lengths ``s_lo`` and ``s_hi`` without overlap.

    ``along(wlh) -> (n,)`` extent along the road; ``lateral_of(wlh) -> (n,)`` unsigned offset;
    ``gap = (min, max)`` free space between neighbours. Extents are scaled for the curvature at the
    row's offset so that neighbours cannot overlap on the inside of a bend.
    """
    n = len(kinds)
    if n == 0:
        return None
    wlh = _sample_wlh(rng, kinds) if wlh is None else wlh
    ext = along(wlh)
    lat = lateral_of(wlh)
    ext = ext / max(1.0 - max_curvature * (np.abs(lat).max() + 3.0), 0.5)
    gaps = rng.uniform(*gap, size=n)
    pitch = 0.5 * ext + gaps + np.concatenate([[0.0], 0.5 * ext[:-1]])
    s = s_lo + rng.uniform(0, gap[1]) + np.cumsum(pitch)
    keep = s + 0.5 * ext <= s_hi
    if not keep.any():
        return None
    per_object = dict(direction=direction, speed=speed, yaw_offset=yaw_offset, state=state)
    per_object = {k: np.asarray(v)[keep] if np.ndim(v) else v for k, v in per_object.items()}
    span = (float(s_lo), float((s + 0.5 * ext)[keep].max()))  # arc lengths the row occupies
    return dict(
        kind=kinds[keep],
        wlh=wlh[keep],
        s0=s[keep],
        lateral=side * lat[keep],
        span=span,
        **per_object,
    )


def _n_for(length, min_pitch):
    return int(max(length, 0.0) / min_pitch) + 2


def _outside(row, s_lo, s_hi, duration=0.0, min_height=0.0, margin=1.0):
    """``row`` (a :func:`_row` result) without the objects at least ``min_height`` tall whose
    bounding circle reaches into arc lengths ``[s_lo - margin, s_hi + margin]`` at any time in
    ``[0, duration]``; ``None`` if none is left."""
    if row is None:
        return None
    half = 0.5 * np.hypot(row["wlh"][:, 0], row["wlh"][:, 1])
    end = row["s0"] + row["direction"] * row["speed"] * duration
    lo, hi = np.minimum(row["s0"], end) - half, np.maximum(row["s0"], end) + half
    keep = (hi < s_lo - margin) | (lo > s_hi + margin) | (row["wlh"][:, 2] < min_height)
    if not keep.any():
        return None
    n = len(keep)
    return {
        k: v[keep] if isinstance(v, np.ndarray) and v.shape[:1] == (n,) else v
        for k, v in row.items()
    }


# State of a guaranteed object at rest (vehicles and cycles: PARKED).
_RESTING_STATE = {
    "pedestrian": STANDING,
    "animal": STATIC,
    "traffic_cone": STATIC,
    "barrier": STATIC,
    "pushable_pullable": STATIC,
}
_SMALL_LENGTH = 3.0  # m: guaranteed kinds up to this mean length are "small" (and low)
_SITE_START = -3.0  # m: arc length where the small groups of the guaranteed site begin
_SITE_CLEAR_TIME = 2.0  # s: how long the lanes beside the site stay free of traffic
_TALL = 2.2  # m: oncoming vehicles taller than any car leave the site free too
# Free band of the parking strips: cycle lane (7.5 m, up to 0.89 m wide) .. walkers (11.8 m).
_STRIP_MIDDLE = 0.5 * (7.5 + 0.445 + 11.8 - 0.405)
_KERB = 8.5  # m: near side of the small objects, more than 0.5 m from passing cyclists


def _beside_road(rng, kinds):
    """Headings of objects standing beside the road, either way round at random: barriers across
    it (their long side, ``w``, along the road, as in work zones), everything else along it.

    Returns ``(yaw_offset (n,), along, across)``; ``along(wlh)`` and ``across(wlh)`` -> (n,) are
    the objects' extents along and across the road.
    """
    turned = np.isin(kinds, [_KIND_INDEX["barrier"]])
    yaw_offset = np.where(turned, math.pi / 2, 0.0) + rng.choice([0.0, math.pi], len(kinds))
    along = lambda w: np.where(turned, w[:, 0], w[:, 1])  # noqa: E731
    across = lambda w: np.where(turned, w[:, 1], w[:, 0])  # noqa: E731
    return yaw_offset, along, across


def _guaranteed_site(rng, kind_names, max_curvature):
    """Rows of parked / standing objects of ``kind_names`` in the parking strips where the ego
    starts (arc length 0 at t = 0); returns ``(rows, {side: (s_lo, s_hi)})``, the arc lengths the
    site occupies on each side (-1: right, the ego's side; 1: left).

    The kinds up to ``_SMALL_LENGTH`` long (cones, barriers, cycles, people: low and easily
    hidden) stand near the kerb on both sides from ``_SITE_START`` forwards, within 15 m of
    the sensor at the first keyframe, where even an 8-beam LiDAR's lower beams reach them; the
    two copies are seen through different lanes, so one vehicle passing in front does not hide
    both. The longer vehicles, one each, are parked just behind and just ahead of these groups,
    spread over the four places so that each holds about the same length of kerb (within about
    25 m of the sensor), straight and in the middle of the strip so that their ends stay clear
    of the cycle lane and the sidewalk in bends. Places, order, gaps, sizes and headings are
    drawn from ``rng``; barriers stand with their long side along the road, as in work zones.
    """
    kinds = np.array([_KIND_INDEX[k] for k in kind_names], np.int64)
    length = np.array([OBJECT_KINDS[k].wlh[1] for k in kind_names])
    small = length <= _SMALL_LENGTH

    def place(k, side, s_lo, kerb):
        if not len(k):
            return None
        k = rng.permutation(k)
        yaw_off, along, across = _beside_road(rng, k)
        if kerb:
            yaw_off = yaw_off + rng.normal(0, 0.02, len(k))
            lateral = lambda w: _KERB + 0.5 * across(w)  # noqa: E731
        else:
            lateral = lambda w: np.full(len(w), _STRIP_MIDDLE)  # noqa: E731
        state = np.array([_RESTING_STATE.get(KIND_NAMES[i], PARKED) for i in k], np.int64)
        return _row(
            rng,
            s_lo,
            np.inf,
            k,
            (0.6, 1.5),
            along,
            lateral,
            yaw_offset=yaw_off,
            state=state,
            side=side,
            max_curvature=max_curvature,
        )

    # Longest first, each to the place with the least length so far; places in random order.
    places = [[] for _ in range(4)]  # (right, left) x (behind, ahead), as permuted below
    load = np.zeros(4)
    for i in sorted(np.flatnonzero(~small), key=lambda i: -length[i]):
        j = int(np.argmin(load))
        places[j].append(kinds[i])
        load[j] += length[i]
    places = [np.array(places[j], np.int64) for j in rng.permutation(4)]
    rows, spans = [], {}
    for n, side in enumerate((-1.0, 1.0)):
        middle = place(kinds[small], side, _SITE_START, True)
        start = middle["span"][1] if middle else _SITE_START
        ahead = place(places[2 * n + 1], side, start, False)
        behind = place(places[2 * n], side, _SITE_START, False)  # placed forwards, then mirrored
        if behind is not None:
            behind["s0"] = 2 * _SITE_START - behind["s0"]
            behind["span"] = (2 * _SITE_START - behind["span"][1], _SITE_START)
        group = [r for r in (behind, middle, ahead) if r is not None]
        if group:
            rows += group
            spans[side] = (min(r["span"][0] for r in group), max(r["span"][1] for r in group))
    return rows, spans


def build_world(
    rng: np.random.Generator,
    spec: WorldSpec,
    duration: float,
    origin: Sequence[float],
    max_sensor_range: float,
) -> World:
    """Build one scene lasting ``duration`` seconds; the road passes through ``origin`` (x, y).

    Objects are generated wherever they could come within ``max(annotation_radius,
    max_sensor_range)`` of the ego during the scene.
    """
    ground_z = rng.uniform(*spec.ground_z_range)
    # Ego speed profile along the road, integrated on a fine time grid.
    t = np.arange(-0.5, duration + 0.5, 0.005)
    if rng.uniform() < spec.ego_stationary_prob:
        v = np.zeros_like(t)
    else:
        v_mean = rng.uniform(*spec.ego_speed_range)
        v = np.maximum(
            v_mean
            + rng.uniform(0, 0.25 * v_mean)
            * np.sin(2 * math.pi * t / rng.uniform(6, 20) + rng.uniform(0, 2 * math.pi)),
            0.0,
        )
    ego_s = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * 0.005)])
    ego_s -= np.interp(0.0, t, ego_s)
    s_ego_lo, s_ego_hi = float(ego_s.min()), float(ego_s.max())
    reach = max(spec.annotation_radius, max_sensor_range) + 40.0
    win_lo, win_hi = s_ego_lo - reach, s_ego_hi + reach
    kmax = spec.max_curvature

    rows = _Rows()

    def add(r):
        if r is not None:
            rows.add(**r)

    def row(s_lo, s_hi, kinds, gap, along, lateral_of, **kw):  # every row: same rng and bends
        return _row(rng, s_lo, s_hi, kinds, gap, along, lateral_of, max_curvature=kmax, **kw)

    def moving_row(mix, min_pitch, gap, along, lateral, side, direction, speed, state=MOVING):
        """Objects of ``mix`` moving at ``speed`` along the road in ``direction``, heading where
        they go, ``lateral`` m from the centreline on ``side``, from wherever they could come
        into reach during the scene."""
        lo, hi = win_lo - speed * duration, win_hi + speed * duration
        kinds = _sample_kinds(rng, mix, _n_for(hi - lo, min_pitch))
        return row(
            lo,
            hi,
            kinds,
            gap,
            along,
            lambda w: np.full(len(w), lateral),
            direction=direction,
            speed=speed,
            yaw_offset=0.0 if direction > 0 else math.pi,
            state=state,
            side=side,
        )

    along_l = lambda w: w[:, 1]  # noqa: E731  heading along the road
    longest = lambda w: np.maximum(w[:, 1], w[:, 0])  # noqa: E731  walkers, any heading
    # The guaranteed site in the parking strips where the ego starts, from its own random stream
    # (rng.spawn does not advance rng): the rest of the world is what it would be without the
    # site, less the objects that make room for it.
    site, site_spans = _guaranteed_site(rng.spawn(1)[0], spec.guaranteed_kinds, kmax)
    for r in site:
        add(r)

    def clear(r, side, duration=0.0, min_height=0.0):  # r less what reaches the site
        return _outside(r, *site_spans[side], duration, min_height) if side in site_spans else r

    # Moving lanes (right-hand traffic; the ego lane at -1.75 stays free of other traffic). So
    # that traffic does not hide the site in the first keyframes, a stopped queue leaves a gap
    # beside it, and so does moving traffic during the first _SITE_CLEAR_TIME seconds: all of it
    # in the lane next to the ego's (it moves along with the ego), the tall vehicles oncoming.
    for lat, direction in ((-5.25, 1.0), (1.75, -1.0), (5.25, -1.0)):
        stopped = rng.uniform() < 0.2
        speed = 0.0 if stopped else rng.uniform(4.0, 14.0)
        gap = (1.5, 4.0) if stopped else (10.0, 60.0)
        r = moving_row(
            spec.lane_mix, 3.0 + gap[0], gap, along_l, abs(lat), np.sign(lat), direction, speed,
            state=STOPPED if stopped else MOVING,
        )  # fmt: skip
        tall = 0.0 if stopped or direction > 0 else _TALL
        add(clear(r, np.sign(lat), min(duration, _SITE_CLEAR_TIME), tall))
    # Cycle lanes.
    for side, direction in ((-1.0, 1.0), (1.0, -1.0)):
        speed = rng.uniform(3.0, 7.0)
        add(moving_row(spec.cycle_mix, 12.0, (10.0, 80.0), along_l, 7.5, side, direction, speed))
    # Parking strips (8.0 .. 11.0 m): parking segments, work zones and empty stretches (making
    # room for the guaranteed site).
    for side in (-1.0, 1.0):
        s = win_lo
        while s < win_hi:
            seg = rng.uniform(20.0, 70.0)
            u = rng.uniform()
            if u < spec.work_zone_prob:
                kinds = _sample_kinds(rng, spec.work_zone_mix, _n_for(seg, 0.5))
                if kinds.size:
                    wlh = _sample_wlh(rng, kinds)
                    yaw_off, along, across = _beside_road(rng, kinds)
                    r = row(
                        s,
                        s + seg,
                        kinds,
                        (0.05, 0.6),
                        along,
                        lambda w, a=across: 8.2 + 0.5 * a(w),
                        yaw_offset=yaw_off,
                        side=side,
                        wlh=wlh,
                    )
                    add(clear(r, side))
            elif u < spec.work_zone_prob + 0.5:
                kinds = _sample_kinds(rng, spec.parking_mix, _n_for(seg, 2.0))
                yaw_off = rng.choice([0.0, math.pi], len(kinds)) + rng.normal(0, 0.02, len(kinds))
                r = row(
                    s,
                    s + seg,
                    kinds,
                    (0.8, 6.0),
                    along_l,
                    lambda w: 8.05 + 0.5 * w[:, 0] + 0.1,
                    yaw_offset=yaw_off,
                    state=PARKED,
                    side=side,
                )
                add(clear(r, side))
            s += seg
    # Sidewalks: walkers on two sub-lanes, a row of standing people and things, poles.
    for side in (-1.0, 1.0):
        for lat in (11.8, 12.8):
            direction = rng.choice([-1.0, 1.0])
            speed = rng.uniform(0.9, 1.6)
            add(moving_row(spec.walker_mix, 6.5, (6.0, 70.0), longest, lat, side, direction, speed))
        kinds = _sample_kinds(rng, spec.sidewalk_static_mix, _n_for(win_hi - win_lo, 2.5))
        state = np.where(
            kinds == _KIND_INDEX["pedestrian"],
            np.where(rng.uniform(size=len(kinds)) < 0.1, SITTING, STANDING),
            np.where(np.isin(kinds, [_KIND_INDEX["bicycle"]]), PARKED, STATIC),
        )
        add(
            row(
                win_lo,
                win_hi,
                kinds,
                (2.0, 40.0),
                lambda w: np.hypot(w[:, 0], w[:, 1]),
                lambda w: np.full(len(w), 14.0),
                yaw_offset=rng.uniform(-math.pi, math.pi, len(kinds)),
                state=state,
                side=side,
            )
        )
        kinds = np.full(_n_for(win_hi - win_lo, 12.0), _KIND_INDEX["pole"])
        add(
            row(
                win_lo,
                win_hi,
                kinds,
                (12.0, 35.0),
                along_l,
                lambda w: np.full(len(w), 14.75),
                side=side,
            )
        )
        # Buildings: near face 15.2 .. 19 m from the centreline.
        n = _n_for(win_hi - win_lo, 8.0)
        kinds = np.full(n, _KIND_INDEX["building"])
        depth = rng.uniform(8.0, 15.0, n)
        wlh = np.round(
            np.stack([depth, rng.uniform(8.0, 30.0, n), rng.uniform(4.0, 25.0, n)], 1), 3
        )
        near = rng.uniform(15.2, 19.0, n)
        add(
            row(
                win_lo,
                win_hi,
                kinds,
                (0.0, 10.0),
                along_l,
                lambda w, nr=near: nr[: len(w)] + 0.5 * w[:, 0],
                side=side,
                wlh=wlh,
            )
        )

    objects = rows.arrays()
    objects["wlh"] = objects["wlh"].reshape(-1, 3).astype(np.float64)
    objects["yaw_offset"] = objects["yaw_offset"].astype(np.float64)
    for key in ("s0", "lateral", "direction", "speed"):
        objects[key] = objects[key].astype(np.float64)
    s_all = objects["s0"][:, None] + (objects["direction"] * objects["speed"])[:, None] * np.array(
        [0.0, duration]
    )
    s_range = (
        min(win_lo, s_all.min(initial=0.0)) - 20.0,
        max(win_hi, s_all.max(initial=0.0)) + 20.0,
    )
    roll_pitch = (
        math.radians(spec.ego_roll_pitch_deg) * rng.uniform(0.3, 1.0),
        rng.uniform(3.0, 9.0),
        rng.uniform(0, 2 * math.pi),
        math.radians(spec.ego_roll_pitch_deg) * rng.uniform(0.3, 1.0),
        rng.uniform(3.0, 9.0),
        rng.uniform(0, 2 * math.pi),
    )
    return World(
        ground_z=ground_z,
        origin=origin,
        heading0=rng.uniform(-math.pi, math.pi),
        curv_amp=rng.uniform(0.0, spec.max_curvature),
        curv_period=rng.uniform(150.0, 600.0),
        curv_phase=rng.uniform(0, 2 * math.pi),
        s_range=s_range,
        ego_times=t,
        ego_s=ego_s,
        ego_lateral=-1.75,
        ego_roll_pitch=roll_pitch,
        objects=objects,
    )


def object_radius(wlh: np.ndarray) -> np.ndarray:
    return 0.5 * np.linalg.norm(wlh, axis=-1)


def select_near(
    centers: np.ndarray,
    wlh: np.ndarray,
    point: np.ndarray,
    radius: float,
    mask: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Indices of boxes whose bounding sphere comes within ``radius`` of ``point``."""
    d = np.linalg.norm(centers - point, axis=1) - object_radius(wlh)
    ok = d <= radius
    if mask is not None:
        ok &= mask
    return np.flatnonzero(ok)
