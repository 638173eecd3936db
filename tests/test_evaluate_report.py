"""``python -m evaluate.report``: the study report of a tiny runs folder, its pages, and the same in Chromium."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from bench.readme_pictures import chromium
from evaluate.report import main
from evaluate.study.html import markdown
from evaluate.study.survey import survey
from plumbing.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
PAGES = ("index.html", "stores.html", "adaptation.html", "curricula.html", "gan.html", "runs.html")
ADAPT = ["--source", "phantom", "--target", "phantom-nih", "--version", "3", "--setting", "0s", "--backbone",
         "resnet18", "--init", "scratch", "--image-size", "32", "--batch-size", "8", "--lr", "0.003",
         "--source-length", "64", "--target-length", "64", "--eval-length", "32", "--steps", "4", "--eval-every", "2",
         "--alignment", "none", "--seeds", "0", "--name", "tiny", "--device", "cpu", "--no-progress"]
CURRICULUM = ["run", "--tasks", "rotation", "--data", "phantom", "--max-images", "64", "--downstream", "phantom",
              "--version", "3", "--setting", "0s", "--length", "96", "--eval-length", "48", "--backbone", "tiny",
              "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--lr", "0.05",
              "--downstream-lr-grid", "0.001", "--monitor-images", "32", "--device", "cpu", "--no-progress"]
STORE = ["--version", "1", "--setting", "0s", "--train-per-class", "4", "--val-per-class", "4"]
GAN = ["--data", "phantom", "--data-length", "64", "--resolution", "32", "--start-resolution", "16", "--stable-kimg",
       "0.016", "--fade-kimg", "0.032", "--batch-size", "8", "--r1-interval", "2", "--ada-kimg", "0.1",
       "--ada-target", "0.0", "--snapshot-kimg", "0.032", "--kimg", "0.064", "--fidelity-images", "4", "--name", "gan",
       "--device", "cpu", "--no-progress"]


def _command(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", *argv], cwd=REPO, check=True, capture_output=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store from the shipped generator, one adaptation cell, one single-task curriculum run and a GAN run of
    two snapshots whose label fidelity the curriculum's downstream classifier measures."""
    folder = tmp_path_factory.mktemp("study")
    _command("synth.generate", *STORE, "--out", str(folder / "v1-0s.zarr"))
    _command("adapt.train", *ADAPT, "--runs-dir", str(folder))
    _command("ssl.curriculum", *CURRICULUM, "--runs-dir", str(folder))
    probe = folder / "ssl-phantom-v3-0s-rotation-seed0" / "downstream" / "classifier.safetensors"
    _command("synth.train", *GAN, "--fidelity-classifier", str(probe), "--runs-dir", str(folder))
    return folder


@pytest.fixture(scope="module")
def report(runs: Path) -> Path:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(runs)])
    assert exit_info.value.code == 0
    return runs / "report"


class _Page(HTMLParser):
    """The links, image sources, element ids, table captions and header cells of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.ids: set[str] = set()
        self.headers: list[str] = []
        self.scripts = 0
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        given = dict(attrs)
        if given.get("id"):
            self.ids.add(given["id"] or "")
        if tag == "a" and given.get("href"):
            self.links.append(given["href"] or "")
        if tag in ("img", "link") and (given.get("src") or given.get("href")):
            self.images.append(given.get("src") or given.get("href") or "")
        self.scripts += tag == "script"
        self._in_th = tag == "th"

    def handle_data(self, data: str) -> None:
        if self._in_th and data.strip():
            self.headers.append(data.strip())

    def handle_endtag(self, tag: str) -> None:
        self._in_th = False if tag == "th" else self._in_th


def _parsed(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def test_markdown_subset_becomes_html_with_mapped_pictures() -> None:
    text = ("# Title\n\nSome **bold** and `code`\nstill the paragraph.\n\n| a | b |\n|---|---|\n| 1 | <x> |\n\n"
            "- one\n- two\n\n```json\n{\"k\": 1}\n```\n![a map](map.png)\n![gone](gone.png)\n")
    html = markdown(text, lambda src: f"assets/{src}" if src == "map.png" else None)
    assert "<h2>Title</h2>" in html
    assert "<p>Some <strong>bold</strong> and <code>code</code> still the paragraph.</p>" in html
    assert "<thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>1</td><td>&lt;x&gt;</td></tr>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and '<pre>{&quot;k&quot;: 1}</pre>' in html
    assert '<img src="assets/map.png" alt="a map">' in html and "[missing picture: gone.png]" in html


@pytest.mark.slow
def test_the_survey_tells_folders_apart_and_says_why_it_shows_others(runs: Path, tmp_path: Path) -> None:
    shutil.copytree(runs, tmp_path / "runs", ignore=shutil.ignore_patterns("report"))
    copy = tmp_path / "runs"
    (copy / "notes").mkdir()
    damaged = copy / "damaged-run"
    damaged.mkdir()
    (damaged / "config.json").write_text('{"adapt": {}}')
    (damaged / "results.json").write_text('{"trained_by": ')
    found = survey(copy)
    assert [s.path.name for s in found.stores] == ["v1-0s.zarr"] and found.stores[0].contact_sheet is not None
    assert [(r.kind, r.name) for r in found.runs] == [
        ("gan", "gan"), ("curriculum", "ssl-phantom-v3-0s-rotation-seed0"), ("adaptation", "tiny-none-seed0")]
    reasons = {o.path.name: o.what for o in found.others}
    assert reasons["damaged-run"].startswith("cannot be read: results.json is not valid JSON")
    assert reasons["notes"].startswith("not a run folder") and "shared pretext step" in reasons["ssl-steps"]


@pytest.mark.slow
def test_the_report_holds_the_tables_pictures_and_commands(runs: Path, report: Path) -> None:
    assert sorted(p.name for p in report.iterdir()) == sorted([*PAGES, ".study-report", "assets"])
    adaptation = _parsed(report / "adaptation.html")
    assert {"alignment", "balanced accuracy", "collapsed", "criterion", "mean gap"} <= set(adaptation.headers)
    assert "tiny-none-seed0" in adaptation.ids
    text = (report / "adaptation.html").read_text()
    assert "python -m adapt.report --format json" in text and "confusion matrix of the final step" in text
    curricula = (report / "curricula.html").read_text()
    assert {"ordering", "k-NN", "linear probe", "fine-tune", "AIL"} <= set(_parsed(report / "curricula.html").headers)
    assert "pretext loss and monitor" in curricula and "Attention inside the lungs" in curricula
    gan = (report / "gan.html").read_text()
    assert "label fidelity per class over training" in gan
    assert "samples at 0.03 kimg" in gan and "samples at 0.06 kimg" in gan
    stores = (report / "stores.html").read_text()
    assert "generator sha256" in stores and "one row per class" in stores
    commands = (report / "runs.html").read_text()
    recorded = json.loads((runs / "tiny-none-seed0" / "config.json").read_text())["command"]
    assert html.escape(recorded) in commands
    # the runs wrote their pictures themselves; the report shows copies of them
    curriculum = "ssl-phantom-v3-0s-rotation-seed0"
    for picture in ("tiny-none-seed0/curves.png", "tiny-none-seed0/confusion.png", f"{curriculum}/pretext.png",
                    f"{curriculum}/downstream/confusion.png", f"{curriculum}/downstream/attention.png"):
        assert (runs / picture).read_bytes() == (report / "assets" / picture).read_bytes(), picture


@pytest.mark.slow
def test_every_page_is_self_contained(report: Path) -> None:
    _assert_self_contained(report)


def _assert_self_contained(report: Path) -> None:
    """No script; every link and picture relative, inside the report and there, every anchor an element id."""
    for name in PAGES:
        page = _parsed(report / name)
        assert page.scripts == 0, name
        for target in [*page.links, *page.images]:
            parsed = urlparse(target)
            assert not parsed.scheme and not parsed.netloc, (name, target)
            path = report / unquote(parsed.path) if parsed.path else report / name
            assert path.resolve().is_relative_to(report.resolve()) and path.is_file(), (name, target)
            if parsed.fragment:
                assert parsed.fragment in _parsed(path).ids, (name, target)


@pytest.mark.slow
def test_running_again_replaces_the_report_and_lists_a_damaged_run(
    runs: Path, report: Path, tmp_path: Path,
) -> None:
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    (copy / "report" / "stale.html").write_text("old")
    (copy / "tiny-none-seed0" / "results.json").write_text("{")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(copy)])
    assert exit_info.value.code == 0
    assert not (copy / "report" / "stale.html").exists()
    assert "results.json is not valid JSON" in (copy / "report" / "index.html").read_text()
    assert [p.name for p in copy.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_odd_names_and_odd_runs_are_shown_or_flagged_and_every_link_still_resolves(
    runs: Path, report: Path, tmp_path: Path,
) -> None:
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy, ignore=shutil.ignore_patterns("report"))
    odd = 'a <b>&"#x'
    shutil.copytree(copy / "tiny-none-seed0", copy / odd)
    bare = copy / "tiny-bare-seed0"
    shutil.copytree(copy / "tiny-none-seed0", bare)
    results = json.loads((bare / "results.json").read_text())
    del results["history"]
    (bare / "results.json").write_text(json.dumps(results))
    (bare / "curves.png").unlink()  # the report would draw it from the history it lacks
    (copy / "gan-starting").mkdir()
    (copy / "gan-starting" / "config.json").write_text('{"network": {}, "training": {}}')
    stale = copy / ".report-new-killed"
    stale.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(copy)])
    assert exit_info.value.code == 0
    out = copy / "report"
    adaptation = (out / "adaptation.html").read_text()
    assert "a &lt;b&gt;&amp;&quot;#x" in adaptation and "<b>" not in adaptation
    assert 'id="a__b____x"' in adaptation
    assert "This run cannot be shown: its files lack or garble a figure the report reads (KeyError: &#x27;history" \
        in adaptation
    assert "a GAN run without a snapshot yet" in (out / "index.html").read_text()
    assert not stale.exists()
    _assert_self_contained(out)


def test_an_out_folder_that_is_not_a_report_or_holds_the_runs_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "runs").mkdir()
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("keep me")
    for out, says in ((tmp_path / "runs", "would replace the runs folder"), (tmp_path, "would replace the runs folder"),
                      (keep, "exists and is not a study report")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, [str(tmp_path / "runs"), "--out", str(out)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert (keep / "mine.txt").read_text() == "keep me" and list((tmp_path / "runs").iterdir()) == []


def test_a_missing_runs_folder_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(tmp_path / "absent")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"python -m evaluate.report: error: {tmp_path / 'absent'} is not a folder of runs"]
    assert list(tmp_path.iterdir()) == []


CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.slow
@pytest.mark.skipif(CHROMEDRIVER is None and not os.environ.get("CXR_REQUIRE_BROWSER"),
                    reason="needs Chromium and its driver (Debian: apt install chromium chromium-driver)")
def test_the_report_in_headless_chromium(report: Path) -> None:
    from selenium.webdriver.common.by import By

    assert CHROMEDRIVER is not None, "CXR_REQUIRE_BROWSER is set, chromedriver missing (apt install chromium-driver)"
    driver = chromium(CHROMEDRIVER, 1400, 1000)
    try:
        seen = set()
        for name in PAGES:
            driver.get((report / name).as_uri())
            assert driver.title and driver.find_element(By.TAG_NAME, "h1").text, name
            for image in driver.find_elements(By.TAG_NAME, "img"):
                loaded = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
                assert loaded, (name, image.get_attribute("src"))
            for anchor in driver.find_elements(By.TAG_NAME, "a"):
                seen.add(anchor.get_attribute("href"))
            if name in ("adaptation.html", "curricula.html"):
                assert driver.find_elements(By.CSS_SELECTOR, "table th"), name
        for href in sorted(seen):
            driver.get(href)
            target = urlparse(href)
            assert target.scheme == "file" and Path(unquote(target.path)).is_file(), href
            if target.fragment:
                assert driver.find_elements(By.ID, target.fragment), href
    finally:
        driver.quit()
