"""The names hpsearch stores on studies and trials, in one place (status, export, report and
the dashboard read what workers and the training engine write)."""

from __future__ import annotations

# Study user attributes.
SPEC = "hpsearch:spec"  # the validated study file
UID = "hpsearch:uid"  # unique per study ever created under a name (checkpoint folders use it)

# Study system attributes: marks of trials added once (storage ResilientRDBStorage.enqueue_once).
ENQUEUED = "hpsearch:enqueued:"  # + the first slot of a batch: that batch is in the queue
REQUEUED = "hpsearch:requeued:"  # + a dead worker's trial number: its retry is in the queue

# Trial system attributes: the budget queue (search/runtime/_budget.py).
SLOT = "hpsearch:slot"  # the budget slot a trial fills; a retry inherits it
REFILL = "hpsearch:refill"  # the next batch of slots this trial's claimer enqueues
# [trial number, evaluations it reported]: the epochs it trained (search/runtime/_compute.py). A
# retry copies its parent's attributes: the number tells the retry's own count from the copy.
EPOCHS = "hpsearch:epochs"
HEARTBEAT = "hpsearch:heartbeat"  # never stored: the proxy turns its write into a heartbeat
# Never stored: the proxy turns its write on a failed trial (the value: [study id, max_retry])
# into the retry's enqueue, marked as REQUEUED: once, however late a frozen worker asks.
REQUEUE = "hpsearch:requeue"
# Set by Optuna's RetryHeartbeatStaleTrialCallback on the retry of a dead worker's trial (the
# failed trial's number); retries are claimed before fresh slots.
RETRY_OF = "failed_trial"
# Optuna's too: the failed trials' numbers a retry follows, the one it replaces last.
RETRY_HISTORY = "retry_history"

# Trial user attributes.
WORKER = "worker"  # {"host", "pid", "devices"} of the worker that ran the trial
ERROR = "error"  # the objective raised: one line; such a trial used its slot
TRACEBACK = "traceback"  # the end of the objective's traceback
CHECKPOINT = "checkpoint"  # the trial's checkpoint file
BATCH = "batch"  # the batch plan: micro-batch x accumulation x world size
SEED = "seed"  # the seed the training engine trained with
COMPRESSION = "compression"  # the compression steps applied after training
NONFINITE_LOSS = "nonfinite_loss"  # why a trial was pruned for a NaN/inf loss
OOM_FALLBACKS = "oom_fallbacks"  # micro-batch halvings after running out of memory
BUDGET_STOP = "budget_stop"  # the compute budget ("epochs", "device_hours") that stopped it
RESUMED_FROM_EPOCH = "resumed_from_epoch"  # the epoch a retried trial resumed from
SAMPLER = "sampler"  # user attribute: which sampler proposed the trial (the auto sampler's choice)

# Multi-objective studies (search/spec/_pareto.py). A trial's reports of the trained metric
# (system attribute, [[step, value], ...]), the metrics its configuration fixes before training
# (user attribute, {name: value}), and why it was pruned: the completed trial that dominated it,
# or the share of the front's hypervolume its best case would have added.
CURVE = "hpsearch:curve"
FIXED_METRICS = "fixed_metrics"
DOMINATED_BY = "dominated_by"
HYPERVOLUME_GAIN = "hypervolume_gain"

# The scheduler (search/runtime/_scheduler.py). A paused trial is PRUNED at its rung, with
# system attribute PAUSED = [its own number, the rung] (a retry's copy names another number);
# its promotion is a WAITING continuation with PROMOTED_FROM, its slot and params.
PAUSED = "hpsearch:paused"
PROMOTED_FROM = "hpsearch:promoted_from"  # the paused trial a continuation resumes
PROMOTED_RUNG = "hpsearch:rung"  # the rung a continuation resumes from
PROMOTED = "hpsearch:promoted:"  # study system attribute + "SLOT:RUNG": enqueued once
PAUSED_AT_RUNG = "paused_at_rung"  # user attribute: what status and the dashboard show
RESUMED_AT_RUNG = "resumed_at_rung"  # user attribute of a continuation

# Population-based training (search/runtime/_pbt.py). A member that exploits ends its trial
# PRUNED at an interval's end, paused as above (PAUSED = [number, the epoch index]); its
# continuation resumes from a copy of the donor's checkpoint with perturbed live options.
EXPLOIT_FROM = "hpsearch:exploit_from"  # continuation: the donor's slot, whose checkpoint it copies
EXPLOIT_STEP = "hpsearch:pbt_step"  # continuation: the interval's last report step it resumes after
COPIED = (
    "hpsearch:copied:"  # study system attribute + "SLOT:STEP": the donor's checkpoint is copied
)
EXPLOITED = "exploited"  # user attribute of a continuation: {"from_slot", "at_epoch", "changed"}
# User attribute: the live options in force for the weights a trial ended with, as
# [[first epoch, {name: value}], ...] (a donor's history comes with its checkpoint).
PARAM_SCHEDULE = "param_schedule"
