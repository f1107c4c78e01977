"""The suite's one DDP run: two gloo ranks, started once by torchrun, train every configuration below in turn.

Starting a process group costs two interpreters (about 8 s of imports each) before a second of work; the equalities
"two ranks give what one process gives" need only the runs' files. The `ddp_runs` fixture (conftest.py) starts
`torchrun --nproc_per_node=2 tests/ddp_runs.py <spec.json>` once a session; each rank composes each run's config as
`make_cfg` does, with `trainer=ddp_cpu`, and calls the real `train(cfg)`. The process group is set up by the first
run and reused by the others (Lightning sets one up only when none is there). Each test compares its run's dir with
a one-process run of the same overrides (`make_cfg(*DDP_RUNS[name])`).
"""

import json
import sys
from pathlib import Path

from helpers import EXACT, NETS, compose_train_small

METRICS = "metrics=[macro_f1,per_class_acc,calibration_error,top2_acc]"
CURVATURE_DATA = ["data=synthetic", "data.image_shape=[1,4,4]", "data.num_train=300", "data.num_test=50",
                  "data.val_size=50", "model.net.hidden=[3]", "optimizer=gd", "optimizer.lr=0.5", "max_epochs=2",
                  "trainer.precision=64-true", "logger=none"]  # fmt: skip
"""test_curvature.SMALL: an MLP 16-3-10 on 250 synthetic samples, in float64."""

DDP_RUNS: dict[str, list[str]] = {
    # test_gd_exact: each rank sums its chunks' losses; dividing by N/2 and DDP's mean give the global mean.
    "gd_mlp": [*EXACT, "chunk_size=33", *NETS["mlp"]],
    "gd_cnn": [*EXACT, "chunk_size=33", *NETS["cnn"]],
    "gd_resnet": [*EXACT, "chunk_size=33", *NETS["resnet"]],
    # test_backprop: DDP's hooks see no autograd backward; the module averages the ranks' gradients itself.
    "gd_manual_backprop": [*EXACT, "chunk_size=33", "model.backprop=manual"],
    # test_batchnorm: chunks of 33, one ghost group of 32 each, the figures of one process in one chunk.
    "batchnorm": [
        "trainer.precision=64-true",
        "logger=none",
        "model=resnet",
        "model.net.width=4",
        "max_epochs=1",
        "batch_size=128",
        "chunk_size=33",
    ],
    # test_metrics: torchmetrics gathers the ranks' states.
    "metrics": [METRICS, "optimizer=gd", "max_epochs=1", "trainer.precision=64-true", "logger=none", "chunk_size=33"],
    # test_noise: B = 45 over chunks of 33 on 2 ranks: shares of 22 and 23, the second cut in two.
    "noise": [
        "trainer.precision=64-true",
        "chunk_size=33",
        "noise.enabled=true",
        "noise.batch_size=45",
        "noise.samples=4",
        "logger=none",
    ],
    # test_curvature: the sharpness by Lanczos over Hessian-vector products summed over the ranks.
    "curvature": [
        *CURVATURE_DATA,
        "curvature.enabled=true",  # test_curvature.CURVATURE
        "curvature.eigenvalues=2",
        "curvature.iterations=40",
        "chunk_size=33",
    ],
    # test_imagenet: each rank's recorded draws (B=64, steps split 32/32, the last uneven), on IDX and Imagenet32.
    "draws_idx": [
        "data._target_=recording_data.RecordingIdx",
        "+data.record_dir={out}/draws_idx_record",
        "batch_size=64",
        "logger=none",
    ],
    "draws_imagenet32": [
        "data=imagenet32",
        "data.data_dir={imagenet32_dir}",
        "data._target_=recording_data.RecordingImageNet",
        "+data.record_dir={out}/draws_imagenet32_record",
        "batch_size=64",
        "logger=none",
    ],
    # test_search: a search's trial on 2 ranks, pruned at its first epoch (the study is made by the fixture).
    "pruned_trial": [
        "max_epochs=3",
        "logger=none",
        "trial={{number:0,id:1,study_name:descent,storage:'sqlite:///{out}/optuna.db',"
        "pruner:{{_target_:optuna.pruners.ThresholdPruner,upper:0.0}}}}",
    ],
}
"""Each run's overrides, as a test gives them to `make_cfg` for its one-process run ({out}, {imagenet32_dir}: the
fixture's dirs)."""


def main(spec_path: str) -> None:
    from descent.training import train

    spec = json.loads(Path(spec_path).read_text())
    for name, overrides in spec["runs"].items():
        cfg = compose_train_small(
            *overrides, "trainer=ddp_cpu", idx_dir=Path(spec["idx_dir"]), run_dir=Path(spec["out"]) / name
        )
        train(cfg)


if __name__ == "__main__":
    main(sys.argv[1])
