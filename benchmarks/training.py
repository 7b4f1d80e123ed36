"""Training speed of the face models against this CPU's matmul peak, in one run.

    .venv/bin/python benchmarks/training.py [--models ...] [--sizes 112 224]
        [--precisions float32 mixed_bfloat16] [--batch-size 32] [--steps 2] [--warmup 2]

(1) tf.matmul peaks, fp32 and bf16, on square matrices (best of the timed repeats);
(2) training images/s of a real train step (``train_on_batch``: forward, backward and
    SGD update, compiled with the project's ``compile_model`` and ArcFace loss) on one
    synthetic batch held in memory, so input is not the bottleneck; every model is built
    fresh after ``keras.backend.clear_session()``;
(3) FLOP utilisation: analytic training FLOPs (3x the forward pass of Conv2D,
    DepthwiseConv2D, Dense, SE, ECA and the ArcFace head; BN, activations, pooling and
    additions are not counted) times images/s, over the matmul peak of the same precision;
(4) the input pipeline (``face_dataset`` over a party folder, ``cache=False`` so every
    epoch decodes the JPEGs) in images/s, on its own, against the training rate;
(5) the targets, as ratios measured in this run.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np
import tensorflow as tf
import yaml

from face_pipeline.models.builders import build_face_model
from face_pipeline.models.inputs import face_dataset, list_class_folders
from face_pipeline.models.layers import ArcFaceHead, EfficientChannelAttention, SqueezeExcitation
from face_pipeline.models.training import compile_model

REPO = Path(__file__).resolve().parents[1]
ORL_FACES = REPO.parent / "shared" / "data" / "orl_faces"
TRAINING_PARAMS = REPO / "conf" / "base" / "parameters_training.yml"

# name -> build_face_model arguments; "resnet50" is keras.applications', the four attentions are ours.
MODELS = {
    "resnet50": {"architecture": "resnet50"},
    "none": {"architecture": "se_eca_resnet50", "attention": "none"},
    "se": {"architecture": "se_eca_resnet50", "attention": "se"},
    "eca": {"architecture": "se_eca_resnet50", "attention": "eca"},
    "se_eca": {"architecture": "se_eca_resnet50", "attention": "se_eca"},
    "mobilenetv2": {"architecture": "mobilenetv2"},
}
PRECISIONS = ("float32", "mixed_bfloat16")
PEAK_DTYPE = {"float32": "fp32", "mixed_bfloat16": "bf16"}
TRAINING_FLOPS_PER_FORWARD = 3  # forward + gradients for inputs and weights


def cpu_description() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{os.cpu_count()} cores"
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.*)$", info, re.MULTILINE)
    wanted = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx512_vnni")
    present = [flag for flag in wanted if flags and flag in flags.group(1).split()]
    name = model.group(1).strip() if model else "unknown CPU"
    return f"{name}, {os.cpu_count()} cores, flags: {', '.join(present) or 'none of ' + ', '.join(wanted)}"


# (1) matmul peaks ------------------------------------------------------------------------------


def matmul_peak(dtype: tf.DType, size: int, repeats: int) -> float:
    """Best GFLOP/s of one ``size`` x ``size`` matmul over ``repeats`` timed calls."""
    a = tf.cast(tf.random.uniform((size, size), -1, 1, seed=1), dtype)
    b = tf.cast(tf.random.uniform((size, size), -1, 1, seed=2), dtype)

    @tf.function
    def product(a, b):
        return tf.matmul(a, b)[0, 0]  # a scalar back, so no copy of the result is timed

    for _ in range(2):
        product(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


# (2, 3) training rate and FLOPs ------------------------------------------------------------------


def forward_flops(model: keras.Model) -> int:
    """Multiply-add FLOPs (2 per MAC) of one image's forward pass, counted from the layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, height, width, _ = layer.output.shape
            kh, kw = layer.kernel_size
            channels = layer.input.shape[-1] * layer.depth_multiplier
            total += 2 * height * width * channels * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, filters = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * height * width * filters * kh * kw * layer.input.shape[-1] // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            positions = int(np.prod(layer.input.shape[1:-1]))
            total += 2 * positions * layer.input.shape[-1] * layer.units
        elif isinstance(layer, SqueezeExcitation):
            channels = layer.input.shape[-1]
            total += 2 * 2 * channels * layer.squeeze.units
        elif isinstance(layer, EfficientChannelAttention):
            total += 2 * layer.input.shape[-1] * layer.kernel_size
        elif isinstance(layer, ArcFaceHead):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def training_params() -> dict:
    """The project's shared training parameters (SGD, ArcFace), as ``kedro run`` would use them."""
    return yaml.safe_load(TRAINING_PARAMS.read_text())["training"]


def train_rate(name: str, img_size: int, precision: str, args, params: dict) -> dict:
    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    model = build_face_model(
        args.classes,
        **MODELS[name],
        img_size=img_size,
        loss=params["loss"],
        embedding_size=params["embedding_size"],
        dropout=params["dropout"],
        precision=precision,
    )
    compile_model(model, params, steps_per_epoch=args.warmup + args.steps)
    images = tf.random.uniform((args.batch_size, img_size, img_size, 3), -1.0, 1.0, seed=3)
    labels = tf.random.uniform((args.batch_size,), 0, args.classes, dtype=tf.int32, seed=4)
    built = time.perf_counter()
    model.train_on_batch(images, labels)  # the first step traces the train function
    first_step = time.perf_counter() - built
    for _ in range(args.warmup - 1):
        model.train_on_batch(images, labels)
    steps = []
    for _ in range(args.steps):
        step_started = time.perf_counter()
        model.train_on_batch(images, labels)  # returns numpy losses: the step has finished
        steps.append(time.perf_counter() - step_started)
    flops = forward_flops(model)
    result = {
        "images_per_s": args.batch_size * len(steps) / sum(steps),
        "step_s": statistics.median(steps),
        "step_spread": (max(steps) - min(steps)) / statistics.median(steps),
        "build_s": built - started,
        "first_step_s": first_step,
        "forward_gflops": flops / 1e9,
        "params_m": model.count_params() / 1e6,
    }
    del model
    return result


# (4) input pipeline ------------------------------------------------------------------------------


def orl_or_synthetic_folder(where: Path, images: int = 400) -> Path:
    """``where/<class>/<n>.jpg``: the ORL faces as 112x112 colour JPEGs, else synthetic faces."""
    pgms = sorted(ORL_FACES.glob("s*/*.pgm"))
    if pgms:
        for path in pgms:
            face = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
            face = cv2.resize(face, (112, 112), interpolation=cv2.INTER_AREA)
            (where / path.parent.name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(
                str(where / path.parent.name / f"{path.stem}.jpg"), face, [cv2.IMWRITE_JPEG_QUALITY, 95]
            )
        return where
    from face_pipeline.pipelines.synthetic.faces import render_face, sample_identity, sample_shot  # noqa: PLC0415

    rng = np.random.default_rng(0)
    for label in range(images // 10):
        identity = sample_identity(rng)
        (where / str(label)).mkdir(parents=True, exist_ok=True)
        for index in range(10):
            face = render_face(identity, sample_shot(rng), rng)
            cv2.imwrite(str(where / str(label) / f"{index}.jpg"), face, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return where


def input_rate(folder: Path, img_size: int, batch_size: int, seconds: float) -> float:
    """Images/s of whole epochs of the training input pipeline, after one warm-up epoch."""
    paths, labels, _ = list_class_folders(folder)
    dataset = face_dataset(
        paths, labels, img_size=img_size, batch_size=batch_size, training=True, cache=False
    )
    for _ in dataset:
        pass
    images, started = 0, time.perf_counter()
    while True:
        for batch, _ in dataset:
            images += int(batch.shape[0])
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return images / elapsed


# (5) report --------------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return numerator / denominator


def show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def target_row(check: str, value: float | None, target: str, verdict) -> str:
    """One summary row; ``verdict(value)`` says whether a measured value meets the target."""
    outcome = "not measured" if value is None else verdict(value)
    return f"    {check:<36}{show(value):>8}   {target:<30}{outcome}"


def within_five_percent(value: float) -> str:
    if value < 0.95:
        return "MISSED (ours slower)"
    return "met" if value <= 1.05 else "outside (ours faster)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[112, 224])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="timed train steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first traces)")
    parser.add_argument("--classes", type=int, default=200, help="a party's number of identities")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument(
        "--party-folder", type=Path, default=REPO / "data" / "03_primary" / "partitioned" / "server" / "train"
    )
    parser.add_argument("--input-seconds", type=float, default=5.0, help="time per input measurement")
    parser.add_argument("--skip-input", action="store_true")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the first step traces the graph)")
    params = training_params()
    run_started = time.perf_counter()

    print(f"CPU: {cpu_description()}; TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print(
        f"batch {args.batch_size}, {args.classes} classes, {params['optimizer']['name']} + {params['loss']}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per model"
    )

    # (1)
    peaks = {}
    for label, dtype in (("fp32", tf.float32), ("bf16", tf.bfloat16)):
        peaks[label] = matmul_peak(dtype, args.matmul_size, args.matmul_repeats)
    print(
        f"\n(1) tf.matmul {args.matmul_size}x{args.matmul_size}, best of {args.matmul_repeats}: "
        f"fp32 {peaks['fp32']:,.0f} GFLOP/s, bf16 {peaks['bf16']:,.0f} GFLOP/s "
        f"({peaks['bf16'] / peaks['fp32']:.2f}x fp32)"
    )

    # (2, 3)
    print("\n(2, 3) training: real train steps on one in-memory batch")
    header = (
        f"{'model':<12}{'size':>5}  {'precision':<15}{'images/s':>9}{'s/step':>8}{'spread':>8}"
        f"{'GFLOP/img':>10}{'train GFLOP/s':>14}{'util':>7}{'params M':>9}{'build s':>8}{'1st step s':>11}"
    )
    print(header)
    print("-" * len(header))
    rates: dict[tuple[str, int, str], float] = {}
    for size in args.sizes:
        for precision in args.precisions:
            for name in args.models:
                try:
                    result = train_rate(name, size, precision, args, params)
                except Exception as error:  # e.g. out of memory: report it and go on with the others
                    print(f"{name:<12}{size:>5}  {precision:<15}failed: {type(error).__name__}: {error}")
                    continue
                rates[name, size, precision] = result["images_per_s"]
                achieved = TRAINING_FLOPS_PER_FORWARD * result["forward_gflops"] * result["images_per_s"]
                utilisation = achieved / peaks[PEAK_DTYPE[precision]]
                print(
                    f"{name:<12}{size:>5}  {precision:<15}{result['images_per_s']:>9.1f}"
                    f"{result['step_s']:>8.2f}{result['step_spread']:>8.0%}{result['forward_gflops']:>10.2f}"
                    f"{achieved:>14.1f}{utilisation:>7.1%}{result['params_m']:>9.2f}"
                    f"{result['build_s']:>8.1f}{result['first_step_s']:>11.1f}",
                    flush=True,
                )
    print(
        f"GFLOP/img: forward pass; training counts {TRAINING_FLOPS_PER_FORWARD}x. util: training "
        "GFLOP/s over the matmul peak of the same precision (fp32 for float32, bf16 for mixed_bfloat16). "
        "spread: (slowest - fastest) / median timed step. 1st step: tracing included, not timed."
    )

    # (4)
    inputs: dict[int, float] = {}
    if not args.skip_input:
        with tempfile.TemporaryDirectory() as scratch:
            folder = args.party_folder
            if not folder.is_dir():
                folder = orl_or_synthetic_folder(Path(scratch) / "faces")
                print(f"\n{args.party_folder} does not exist (run `make demo`): using {folder}")
            count = len(list_class_folders(folder)[0])
            print(
                f"\n(4) input pipeline: face_dataset(training=True, cache=False), {count} JPEGs in {folder}"
            )
            for size in args.sizes:
                inputs[size] = input_rate(folder, size, args.batch_size, args.input_seconds)
                against = ", ".join(
                    f"{show(ratio(inputs[size], rates.get(('se_eca', size, p))))} se_eca {p} training"
                    for p in args.precisions
                )
                print(f"  {size:>3}: {inputs[size]:8.0f} images/s -> {against}")

    # (5)
    print("\n(5) targets, as ratios measured in this run")
    for size in args.sizes:
        for precision in args.precisions:
            se_eca = rates.get(("se_eca", size, precision))
            none = rates.get(("none", size, precision))
            print(f"  {size} {precision}:")
            print(
                target_row(
                    "se_eca / none images/s",
                    ratio(se_eca, none),
                    ">= 0.85 (<= 15% slower)",
                    lambda value: "met" if value >= 0.85 else "MISSED",
                )
            )
            print(
                target_row(
                    "none / keras ResNet50 images/s",
                    ratio(none, rates.get(("resnet50", size, precision))),
                    "0.95-1.05 (within 5%)",
                    within_five_percent,
                )
            )
            print(
                target_row(
                    "input / se_eca training images/s",
                    ratio(inputs.get(size), se_eca),
                    ">= 5x",
                    lambda value: "met" if value >= 5 else "MISSED",
                )
            )
        bf16 = ratio(rates.get(("se_eca", size, "mixed_bfloat16")), rates.get(("se_eca", size, "float32")))
        print(f"  {size} mixed_bfloat16 against float32:")
        print(
            target_row(
                "se_eca bf16 / fp32 images/s",
                bf16,
                "> 1 (bf16 faster)",
                lambda value: "faster" if value > 1 else "NOT faster",
            )
        )
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"\ntotal {time.perf_counter() - run_started:.0f}s, peak memory {peak_gib:.1f} GiB")


if __name__ == "__main__":
    main()
