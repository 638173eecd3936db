"""``python -m bench.readme_pictures``: the README's pictures, taken from a finished ``bin/demo``.

Copies five of the demo's pictures into ``bench/pictures/`` (shrunk to at
most ``--width`` pixels wide, PNG with a reduced palette, so the repository
stays small) and takes a screenshot of the study report's adaptation page
in headless Chromium (Debian's ``chromium`` and ``chromium-driver`` with
selenium). Run it after ``bin/demo``; it refuses a demo folder that lacks a
picture, in one line.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from plumbing.cli import make_parser, run_cli
from plumbing.errors import UserError

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

PROG = "python -m bench.readme_pictures"
OUT = Path(__file__).resolve().parent / "pictures"
PICTURES = {
    "demo-contact.png": "v1-0s-contact.png",
    "demo-quality-samples.png": "v1-0s.zarr.quality/samples.png",
    "demo-adaptation-curves.png": "adapt-synthetic-phantom-nih-ours-seed0/curves.png",
    "demo-pretext.png": "ssl-phantom-v3-0s-rotation-moco-seed0/pretext.png",
    "demo-attention.png": "ssl-phantom-v3-0s-rotation-moco-seed0/downstream/attention.png",
}
"""README picture -> the demo's file it is made from (relative to the demo's runs folder)."""
SCREENSHOT = "report-adaptation.png"
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


def shrink(source: Path, target: Path, width: int) -> None:
    """``source`` at most ``width`` pixels wide (aspect kept), as a 64-colour PNG."""
    with Image.open(source) as image:
        picture = image.convert("RGB")
    if picture.width > width:
        picture = picture.resize((width, round(picture.height * width / picture.width)), Image.Resampling.LANCZOS)
    picture.quantize(colors=64).save(target, optimize=True)


def chromium(driver_path: str, width: int, height: int) -> WebDriver:
    """Headless Chromium driven through ``driver_path`` (chromedriver) with a ``width`` x ``height`` window; the
    flags keep it off the network (also used by the study report's browser test)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for argument in (*CHROMIUM_ARGS, f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))


def screenshot(page: Path, target: Path, width: int, height: int, driver_path: str) -> None:
    """A screenshot of ``page`` (a file) in headless Chromium (:func:`chromium`) at ``width`` x ``height``."""
    driver = chromium(driver_path, width, height)
    try:
        driver.get(page.resolve().as_uri())
        driver.save_screenshot(str(target))
    finally:
        driver.quit()


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "The README's pictures from a finished bin/demo: five of its pictures and a "
                               "screenshot of its study report.",
                         example="python -m bench.readme_pictures --runs-dir runs/demo")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/demo"), help="the demo's runs folder")
    parser.add_argument("--width", type=int, default=640, help="widest picture in pixels")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [name for name in [*PICTURES.values(), "report/adaptation.html"] if not (args.runs_dir / name).is_file()]
    if missing:
        raise UserError(f"{args.runs_dir} lacks {', '.join(missing)}; run bin/demo first")
    driver_path = shutil.which("chromedriver")
    if driver_path is None:  # checked before any picture is replaced
        raise UserError("chromedriver not found (Debian: apt install chromium chromium-driver)")
    OUT.mkdir(exist_ok=True)
    for target, source in PICTURES.items():
        shrink(args.runs_dir / source, OUT / target, args.width)
    shot = OUT / SCREENSHOT
    screenshot(args.runs_dir / "report" / "adaptation.html", shot, 1280, 900, driver_path)
    shrink(shot, shot, 960)
    for target in [*PICTURES, SCREENSHOT]:
        print(f"{OUT / target} ({(OUT / target).stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    run_cli(main)
