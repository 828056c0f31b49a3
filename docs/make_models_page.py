"""Write docs/models.md from the shipped model cards (so the page never drifts from them).

Run after any ``python -m astromorph_training MODEL export``::

    python docs/make_models_page.py
"""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Headline numbers per task, looked up in a card's "metrics" (first match wins).
HEADLINE = ("accuracy", "macro_recall", "ece", "rmse", "roc_auc", "fnr", "fpr",
            "linear_probe_accuracy", "precision_at_25")


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flatten(metrics, prefix=""):
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def main():
    lines = ["# Shipped models", "",
             "Generated from `models/*/card.json` by `docs/make_models_page.py`; the cards are",
             "the reference. Metrics are on held-out data the models never saw in training.", "",
             "Models of your own: `load_model(path)` takes a folder holding `model.onnx` and",
             "`card.json` (or an `.onnx` file with `<stem>.json` or `card.json` beside it), cards in",
             "the format of [model-cards.md](model-cards.md). A plain name (no `/`, no `.onnx`) is",
             "looked up in the models directory: the packaged models, or `$ASTROMORPH_MODELS_DIR`",
             "when it is set, which *replaces* them (a packaged name is then not found unless",
             "that directory holds it; nothing is merged, so two models never share a name). Each",
             "`<dir>/<name>/` there must have a card whose `name` is `<name>` (lower-case",
             "letters, digits, `-`, `_`); `astromorph models --verify` reports every folder that",
             "does not, or cannot be read. At load, the card is checked against the file: its",
             "`sha256` (64 hex digits, any case; surrounding spaces ignored) against the file's,",
             "read in 1 MiB chunks and hashed once per process and file version (path, mtime,",
             "size); `input.shape` and the number of `labels` against the graph's; the graph's",
             "batch axis must be dynamic; variant and single-band files must lie beside",
             "`model.onnx`. Any mismatch is a `ModelCardError` (or `ChecksumMismatchError`,",
             "`ModelLoadError` for a file that is no ONNX graph) naming the field and file.", ""]
    for card_path in sorted((ROOT / "models").glob("*/card.json")):
        card = json.loads(card_path.read_text())
        spec = card["input"]
        lines += [f"## `{card['name']}` v{card['version']} ({card['task']})", "",
                  card.get("summary", ""), "",
                  f"- input: `{spec['shape']}` {spec.get('normalisation', '')}".rstrip(),
                  f"- preprocessing: `{spec.get('preprocessing')}`",
                  f"- angular size: `{json.dumps(spec.get('angular_size'))}`"]
        for out in card["outputs"]:
            labels = out.get("labels") or []
            shown = ", ".join(labels[:8]) + (" ..." if len(labels) > 8 else "")
            lines.append(f"- output `{out['name']}` ({out.get('kind')})"
                         + (f": {shown}" if shown else ""))
        training = card.get("training", {})
        if isinstance(training, dict):
            for key in ("data", "terms", "split", "command", "time", "machine"):
                if training.get(key):
                    lines.append(f"- training {key}: {_fmt(training[key])}")
        if card.get("recommended_threshold") is not None:
            lines.append(f"- recommended threshold: {card['recommended_threshold']}"
                         + (f" ({card['threshold_note']})" if card.get("threshold_note") else ""))
        if card.get("licence"):
            lines.append(f"- licence: {card['licence']}")
        for limitation in card.get("limitations") or []:
            lines.append(f"- limitation: {limitation}")
        metrics = card.get("metrics", {})
        lines += ["", f"Held-out metrics (`{metrics.get('command', '?')}`):", "",
                  "| metric | value |", "|---|---|"]
        shown = [(k, v) for k, v in _flatten(metrics)
                 if any(h in k for h in HEADLINE) and "per_class" not in k][:24]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in shown]
        noise = metrics.get("label_noise_context")
        if noise:
            counts = ", ".join(f"n = {k}: {_fmt(v)}" for k, v in noise.items() if k != "summary")
            lines += ["", f"Label noise: {noise['summary']}: {counts}."]
        if metrics.get("figures"):
            lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in metrics["figures"]) + "."]
        lines += ["", f"sha256 `{card['sha256']}`", ""]
        for precision, variant in (card.get("variants") or {}).items():
            vm = variant.get("metrics", {})
            lines += [f"Variant `{precision}` (`{variant['file']}`, "
                      f"`load_model({card['name']!r}, precision={precision!r})`): "
                      f"{variant.get('quantization', '')}", "",
                      "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in _flatten(vm)
                      if (any(h in k for h in HEADLINE) or "agreement" in k)
                      and "per_class" not in k][:12]
            rate = (variant.get("performance") or {}).get("stamps_per_second")
            if rate:
                lines += [f"| stamps per second (2 CPU threads) | {rate} |"]
            lines += ["", f"sha256 `{variant['sha256']}`", ""]
    (ROOT / "docs" / "models.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {ROOT / 'docs' / 'models.md'}")


if __name__ == "__main__":
    main()
