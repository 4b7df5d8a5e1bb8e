"""Population-based training (Jaderberg et al. 2017) on the queue of trials.

A member is a budget slot: its configuration trains in intervals of ``interval_epochs``. At the
end of each interval (as the engine reports that epoch, through the pruner seam) every member's
trial ends as PRUNED, paused as an ASHA pause is (honest for Optuna, out of the samplers' way),
and its worker takes other work: with fewer workers than members the population takes turns.
Once every member has reported that epoch and paused, any worker decides for all of them
(:func:`continue_members`): the bottom ``quantile`` *exploits*, copying the checkpoint (weights,
optimizer, schedule: a file, a folder of shards, in a folder or a bucket) of a member drawn from
the top ``quantile`` while every member of that epoch is still paused, and *explores*: floats and
ints multiplied by a perturbation factor, or resampled from their ``[space]`` entry. Each member
then gets one WAITING continuation in its slot (its own options, or the donor's explored), which
any worker resumes from the slot's checkpoint; an exploiting one first takes the copy, kept
under the decision's own name in its slot's folder (:func:`take_exploited_weights`). Only a
member's last interval, trained to ``max_epochs``, ends COMPLETE.

A checkpoint carries the history of the live options that trained it, so a member's
``param_schedule`` is the whole schedule behind its weights, donors' intervals included.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import (
    EXPLOIT_FROM,
    EXPLOIT_STEP,
    EXPLOITED,
    PAUSED,
    PROMOTED,
    PROMOTED_FROM,
    SLOT,
)
from hpsearch.search.runtime._checkpoints import (
    CheckpointSync,
    copy_checkpoint,
    exploit_copy,
    remove_old_copies,
    take_copy,
)
from hpsearch.search.runtime._scheduler import (
    enqueue_once,
    paused_trials,
    proposer,
    rung_values,
)
from hpsearch.search.spec._scheduler import PbtSchedule
from hpsearch.search.spec._study_file import StudySpec
from hpsearch.storage._optuna_internals import storage_of, study_id_of, trial_id_of

log = logging.getLogger("hpsearch.worker")


def _slot(trial: FrozenTrial) -> int:
    slot = trial.system_attrs.get(SLOT)
    return int(slot) if slot is not None else -1 - trial.number


def _rng(seed: int | None, *keys: int) -> random.Random:
    """Decisions follow the study's seed, the member and the epoch, never who takes them."""
    text = repr((seed, *keys)).encode()
    return random.Random(int.from_bytes(hashlib.sha256(text).digest()[:8], "big"))


class PbtPruner(optuna.pruners.BasePruner):
    """Every member pauses at the end of each interval (the engine reports that epoch, then
    asks the pruner): its worker takes other work while the population catches up, and
    :func:`continue_members` decides for the whole population at once."""

    def __init__(self, schedule: PbtSchedule) -> None:
        self.schedule = schedule

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self.schedule.at_interval_end(step):
            return False
        if trial.system_attrs.get(EXPLOIT_STEP) == step:
            # A continuation's first report is its checkpoint's last one, decided on already:
            # it trains an interval with its options before it is compared again.
            return False
        storage_of(study).set_trial_system_attr(trial_id_of(trial), PAUSED, [trial.number, step])
        return True


def quantiles(
    values: Mapping[int, float], quantile: float, *, maximize: bool
) -> tuple[list[int], list[int]]:
    """The bottom and the top members by value: ``ceil(n * quantile)`` each, at most half of
    the ``n`` members (as Ray Tune's PBT), none below two members. Non-finite values rank last."""
    n = len(values)
    count = min(math.ceil(n * quantile), n // 2)
    if count < 1:
        return [], []

    def worst_first(slot: int) -> float:
        value = values[slot]
        if not math.isfinite(value):
            return -math.inf
        return value if maximize else -value

    ranked = sorted(values, key=worst_first)
    return ranked[:count], ranked[-count:]


def continue_members(
    study: optuna.Study,
    storage: object,
    spec: StudySpec,
    study_uid: str,
    *,
    last: bool,
) -> bool:
    """Decide for the members paused at an interval's end once every member has paused there
    (``last``: nothing else is left to run, so decide with those that did): the bottom
    ``quantile`` takes a top member's weights and explored options, the others go on as they
    were. Enqueues each decision's continuation, once however many workers decide at the same
    time (our RDB storages); returns whether any was added."""
    schedule = spec.scheduler
    assert isinstance(schedule, PbtSchedule)
    seed = spec.sampler.seed
    trials = study.get_trials(deepcopy=False)
    paused = paused_trials(trials)
    if not paused:
        return False
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    # Each member's configuration now: its latest trial that started.
    latest: dict[int, FrozenTrial] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.system_attrs.get(SLOT) is not None and trial.state != TrialState.WAITING:
            latest[_slot(trial)] = trial
    added = False
    for step in sorted({step for _, step in paused}):
        values = rung_values(trials, step)
        if not last and (len(values) < schedule.population or _on_their_way(trials, step)):
            # Members still on their way to this epoch's pause. Deciding without one that has
            # reported but not paused yet would queue its donor on: by the time it paused, the
            # donor's checkpoint would no longer be the one it was ranked by.
            continue
        bottom, top = quantiles(values, schedule.quantile, maximize=maximize)
        decided = [
            (trial, _rng(seed, _slot(trial), step).choice(top) if _slot(trial) in bottom else None)
            for trial, at in paused
            if at == step
        ]
        # The copies first, while every member of this epoch is paused: a donor's checkpoint
        # is still the one it was ranked by (its own continuation is not queued yet). A member
        # whose copy cannot be made goes on as it was: its own weights, its own options.
        for index, (trial, donor) in enumerate(decided):
            if (
                donor is not None
                and not _enqueued(study, _slot(trial), step)
                and not _copy(spec, study_uid, study, trial, donor, step)
            ):
                decided[index] = (trial, None)
        # Then the continuations.
        for trial, donor in decided:
            source = latest[_slot(trial) if donor is None else donor]
            added = _enqueue(study, storage, schedule, seed, trial, step, source) or added
    return added


def _on_their_way(trials: Sequence[FrozenTrial], step: int) -> bool:
    """Whether a member has reported ``step`` and not paused there yet: its trial still runs
    (between the report and its end), or its retry waits. A continuation after ``step`` starts
    with that report, copied: it is on its way to the next interval."""
    return any(
        trial.state in (TrialState.RUNNING, TrialState.WAITING)
        and trial.system_attrs.get(SLOT) is not None
        and trial.last_step == step
        and trial.system_attrs.get(EXPLOIT_STEP) != step
        for trial in trials
    )


def _key(member: int, step: int) -> str:
    """The study attribute that marks a member's continuation after ``step`` as queued."""
    return f"{PROMOTED}{member}:pbt{step}"


def _copied_key(member: int, step: int) -> str:
    """The study attribute that marks the donor's weights as copied to a member after ``step``
    (written before any continuation of that epoch is queued)."""
    return f"{_key(member, step)}:copied"


def _taken_key(member: int, step: int) -> str:
    """The study attribute that marks the copy made for a member after ``step`` as taken: its
    continuation (or that one's retry) trains the slot's checkpoint from then on."""
    return f"{_key(member, step)}:taken"


def _marked(study: optuna.Study, key: str) -> bool:
    return key in storage_of(study).get_study_system_attrs(study_id_of(study))


def _enqueued(study: optuna.Study, member: int, step: int) -> bool:
    return _marked(study, _key(member, step))


def _copy(
    spec: StudySpec,
    study_uid: str,
    study: optuna.Study,
    paused: FrozenTrial,
    donor: int,
    step: int,
) -> bool:
    """Copy the donor's checkpoint over the member's paused one; whether the member takes the
    donor's weights (copied now or by another worker), else it goes on from its own."""
    member = _slot(paused)

    def still_current() -> bool:
        # Only a continuation writes a slot's checkpoint after its pause, and whoever enqueues
        # continuations copies first. So while the donor's is not queued, the version this copy
        # holds is the one the donor was ranked by. Otherwise another worker decided (and
        # copied) meanwhile: a late copy could hold weights the donor trained since, under a
        # curve that never reported them. (A copy that lands after this answer, its worker
        # stalled, lands under this decision's name: taken once, or never read.)
        return not (_enqueued(study, donor, step) or _enqueued(study, member, step))

    outcome = copy_checkpoint(
        spec,
        study_uid,
        donor,
        member,
        copy=exploit_copy(step, donor),
        still_current=still_current,
    )
    if outcome == "copied":
        storage_of(study).set_study_system_attr(
            study_id_of(study), _copied_key(member, step), donor
        )
        return True
    if outcome == "stale" and _marked(study, _copied_key(member, step)):
        return True  # another worker copied first, and queues the member with the donor's
    # No copy, and none will be made: the donor has no checkpoint, or it went on before this
    # member paused (it was decided without it: a retry that came late).
    why = "has no checkpoint" if outcome == "missing" else "went on before it paused"
    log.warning(
        "slot %d cannot take slot %d's weights at epoch %d (slot %d %s); it goes on from its "
        "own weights and options",
        member,
        donor,
        step + 1,
        donor,
        why,
    )
    return False


def take_exploited_weights(
    study: optuna.Study, spec: StudySpec, study_uid: str, trial: FrozenTrial, sync: CheckpointSync
) -> bool:
    """Before an exploiting continuation trains: the copy of its donor's checkpoint made at the
    decision becomes its slot's checkpoint, once (a retry after it trained keeps what it
    trained); whether it was taken now (then the slot's object in a bucket is already fetched).
    Every continuation of a member then removes its slot's copies of decisions up to its own
    (``remove_old_copies``): one that landed late does not stay for the member's whole run.
    """
    donor, step = trial.system_attrs.get(EXPLOIT_FROM), trial.system_attrs.get(EXPLOIT_STEP)
    if step is None:
        return False  # not a member's continuation
    member, taken = _slot(trial), _taken_key(_slot(trial), int(step))
    took = False
    if donor is not None and not _marked(study, taken):
        # Killed between the take and the mark, a retry takes it again, or finds it gone (a
        # file system's move): the slot then holds it, as nothing trained in between.
        took = take_copy(spec, study_uid, member, exploit_copy(int(step), int(donor)), sync)
        storage_of(study).set_study_system_attr(study_id_of(study), taken, int(donor))
    remove_old_copies(spec, study_uid, member, through_step=int(step))
    return took


def _enqueue(
    study: optuna.Study,
    storage: object,
    schedule: PbtSchedule,
    seed: int | None,
    paused: FrozenTrial,
    step: int,
    donor: FrozenTrial,
) -> bool:
    """The continuation of a member paused at ``step``: from its own checkpoint and options
    (``donor`` is its own latest trial), or from a copy of the donor's, explored."""
    member, source = _slot(paused), _slot(donor)
    user_attrs: dict[str, Any] = {"promoted_from": paused.number}
    system_attrs: dict[str, Any] = {SLOT: member, PROMOTED_FROM: paused.number, EXPLOIT_STEP: step}
    params: dict[str, Any] = dict(donor.params)
    changed: dict[str, tuple[Any, Any]] = {}
    if source != member:
        params, changed = explore(
            params, donor.distributions, schedule, _rng(seed, member, step, 1)
        )
        user_attrs[EXPLOITED] = {"from_slot": source, "at_epoch": step + 1, "changed": changed}
        system_attrs[EXPLOIT_FROM] = source
    else:
        user_attrs.update(proposer(donor))  # its own params, as its sampler proposed them
    continuation = optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=params,
        distributions=donor.distributions,
        # The curve of the weights it resumes: its member's so far, or its donor's.
        intermediate_values={k: v for k, v in donor.intermediate_values.items() if k <= step},
        user_attrs=user_attrs,
        # fixed_params: Optuna's mark of an enqueued trial, whose params samplers leave alone.
        system_attrs={**system_attrs, "fixed_params": dict(params)},
    )
    added = enqueue_once(study, storage, _key(member, step), paused, continuation)
    if added and source != member:
        shown = ", ".join(f"{name} {old:.4g} -> {new:.4g}" for name, (old, new) in changed.items())
        log.info(
            "slot %d takes slot %d's weights at epoch %d%s",
            member,
            source,
            step + 1,
            f": {shown}" if shown else "",
        )
    return added


def explore(
    params: Mapping[str, Any],
    distributions: Mapping[str, BaseDistribution],
    schedule: PbtSchedule,
    rng: random.Random,
) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """The donor's params with each explored one perturbed; and what changed, ``{name: (old,
    new)}``. A float or int is resampled from its distribution with ``resample_probability``,
    else multiplied by one of ``perturb_factors`` and kept within its bounds (and step); a
    categorical is resampled with that probability, else kept."""
    out = dict(params)
    changed: dict[str, tuple[Any, Any]] = {}
    for name in schedule.explore:
        if name not in out or name not in distributions:
            continue  # a conditional option this configuration does not use
        dist, old = distributions[name], out[name]
        resample = rng.random() < schedule.resample_probability
        if isinstance(dist, CategoricalDistribution):
            new = rng.choice(list(dist.choices)) if resample else old
        elif isinstance(dist, FloatDistribution | IntDistribution):
            new = _perturbed(dist, old, schedule.perturb_factors, rng, resample)
        else:
            continue
        if new != old:
            out[name] = new
            changed[name] = (old, new)
    return out, changed


def _perturbed(
    dist: FloatDistribution | IntDistribution,
    value: float,
    factors: Sequence[float],
    rng: random.Random,
    resample: bool,
) -> float:
    low, high = float(dist.low), float(dist.high)
    if resample:
        if dist.log:
            new = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            new = rng.uniform(low, high)
    else:
        new = float(value) * rng.choice(list(factors))
    new = min(high, max(low, new))
    if dist.step is not None:
        new = low + round((new - low) / dist.step) * dist.step
        new = min(high, max(low, new))
    return round(new) if isinstance(dist, IntDistribution) else new
