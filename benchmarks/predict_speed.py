"""``mvp-jax predict`` throughput against transformers' PyTorch pipeline, same export, same CPU.

mvp-jax: ``mvp_jax.serving.predict`` (the JAX model of the export, jit-compiled, texts tokenised in
chunks, sorted by length and batched into length buckets). PyTorch: transformers'
``pipeline("text-classification")`` on the same export directory, same batch size (it pads each
batch to its longest text, in input order). Inputs: the SST-2 dev sentences
(``../shared/data/glue/SST-2/dev.tsv``). Both run once to warm up (JAX compiles one program per
bucket), then timed passes alternate, so both see the same load on a shared machine. Reported:
examples/s of every pass, their medians and ratio, and the largest difference between the two
models' class probabilities.

    python benchmarks/predict_speed.py --batch-size 32 --rounds 5 \\
        --json benchmarks/results/cpu-2026-11-28/predict_speed.json

The model: ``--model DIR`` (an export), else the flagship export if present
(/tmp/flagship-quiet/flagship/export), else the embedded MiniLM with a fresh two-class head,
exported to a temporary directory (throughput does not depend on the head's values).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2_DEV = (ROOT / ".." / "shared" / "data" / "glue" / "SST-2" / "dev.tsv").resolve()
FLAGSHIP = Path("/tmp/flagship-quiet/flagship/export")


def sst2_sentences(path: Path = SST2_DEV, n: int | None = None) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [r[0] for r in rows[1:] if r]
    return sentences[:n] if n else sentences


def embedded_export(directory: str) -> str:
    """The embedded MiniLM with a fresh two-class head, exported as a Hugging Face directory."""
    import jax

    from mvp_jax.export.huggingface import export_hf
    from mvp_jax.models import load_pretrained

    pre = load_pretrained("minilm-l6", head="classification", num_labels=2)
    return export_hf(os.path.join(directory, "export"), jax.device_get(pre.params), pre.config,
                     "classification", tokenizer_path=pre.path,
                     label_names=("negative", "positive"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="exported model directory (default: see the docstring)")
    ap.add_argument("--n", type=int, help="first N sentences (default: all 872)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="timed passes of each")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    import torch
    import transformers

    from mvp_jax.serving.predict import load_predictor, predict_texts

    texts = sst2_sentences(n=args.n)
    tmp = tempfile.TemporaryDirectory()
    if args.model:
        model, source = args.model, args.model
    elif FLAGSHIP.is_dir():
        model, source = str(FLAGSHIP), str(FLAGSHIP)
    else:
        model, source = embedded_export(tmp.name), "embedded MiniLM, fresh 2-class head"
    load_start = os.getloadavg()

    predictor = load_predictor(model)
    clf = transformers.pipeline("text-classification", model=model, device=-1, top_k=None)
    names = list(predictor.label_names)

    def run_jax():
        return list(predict_texts(predictor, texts, batch_size=args.batch_size))

    def run_torch():
        return clf(texts, batch_size=args.batch_size)

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, len(texts) / (time.perf_counter() - t)

    ours, _ = timed(run_jax)  # warm-up: compiles one program per length bucket
    theirs, _ = timed(run_torch)
    p_jax = np.asarray([[r["probabilities"][n] for n in names] for r in ours])
    p_torch = np.asarray([[{d["label"]: d["score"] for d in r}[n] for n in names]
                          for r in theirs])
    rates = {"mvp_jax": [], "torch_pipeline": []}
    for _ in range(args.rounds):
        rates["mvp_jax"].append(timed(run_jax)[1])
        rates["torch_pipeline"].append(timed(run_torch)[1])
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "benchmark": "predict_speed",
        "date": date.today().isoformat(),
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "model": source,
        "inputs": f"SST-2 dev sentences ({len(texts)})",
        "batch_size": args.batch_size,
        "max_seq_length": predictor.max_seq_length,
        "rounds": args.rounds,
        "examples_per_s": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "median_examples_per_s": {k: round(v, 2) for k, v in med.items()},
        "mvp_jax_over_torch": round(med["mvp_jax"] / med["torch_pipeline"], 3),
        "max_abs_probability_difference": float(np.abs(p_jax - p_torch).max()),
        "same_label_fraction": float(np.mean(p_jax.argmax(1) == p_torch.argmax(1))),
        "loadavg_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "torch_threads": torch.get_num_threads(),
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
