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
HEARTBEAT = "hpsearch:heartbeat"  # never stored: the proxy turns its write into a heartbeat
# Set by Optuna's RetryHeartbeatStaleTrialCallback on the retry of a dead worker's trial (the
# failed trial's number); retries are claimed before fresh slots.
RETRY_OF = "failed_trial"

# Trial user attributes.
WORKER = "worker"  # {"host", "pid", "devices"} of the worker that ran the trial
ERROR = "error"  # the objective raised: one line; such a trial used its slot
TRACEBACK = "traceback"  # the end of the objective's traceback
CHECKPOINT = "checkpoint"  # the trial's checkpoint file
BATCH = "batch"  # the batch plan: micro-batch x accumulation x world size
COMPRESSION = "compression"  # the compression steps applied after training
NONFINITE_LOSS = "nonfinite_loss"  # why a trial was pruned for a NaN/inf loss
OOM_FALLBACKS = "oom_fallbacks"  # micro-batch halvings after running out of memory
RESUMED_FROM_EPOCH = "resumed_from_epoch"  # the epoch a retried trial resumed from
