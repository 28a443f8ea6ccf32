"""LICENSE matches the metadata; every shipped third-party file is listed with its terms."""

from __future__ import annotations

import pathlib
import re
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parents[1]
LISTED_DIRS = ("test/data", "scripts/ros_wheels")


def _listed_paths() -> set[str]:
    """Paths named in the first column of THIRD_PARTY.md's tables."""
    text = (ROOT / "THIRD_PARTY.md").read_text()
    return set(re.findall(r"^\|\s*`([^`]+)`\s*\|", text, flags=re.MULTILINE))


def test_license_is_mit_and_matches_metadata():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text
    assert re.search(r"Copyright \(c\) 20\d\d \S", text)
    for pkg in ("package.xml", "msg/package.xml"):
        licenses = [e.text for e in ET.parse(ROOT / pkg).getroot().iter("license")]
        assert licenses == ["MIT"], (pkg, licenses)
    setup = (ROOT / "setup.py").read_text()
    assert 'license="MIT"' in setup
    assert '"LICENSE"' in setup  # installed with the package (share/scal3r_ros/LICENSE)


def test_every_shipped_third_party_file_is_listed():
    listed = _listed_paths()
    shipped = {
        p.relative_to(ROOT).as_posix()
        for d in LISTED_DIRS
        for p in (ROOT / d).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert shipped, "nothing found: wrong root?"
    missing = sorted(shipped - listed)
    assert not missing, f"add these to THIRD_PARTY.md (source, terms, how made): {missing}"
    stale = sorted(p for p in listed if not (ROOT / p).exists())
    assert not stale, f"THIRD_PARTY.md lists files that do not exist: {stale}"
