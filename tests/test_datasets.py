"""Dataset registry checks and the Kodak downloader, against a loopback HTTP server serving the
shared Kodak folder (nothing leaves 127.0.0.1)."""
from __future__ import annotations

import functools
import http.server
import threading

import pytest
from PIL import Image

from lic_core import datasets
from lic_core.errors import DatasetError


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(folder) -> (base URL, list of requested paths); the server stops after the test."""
    servers = []

    def start(folder):
        requests: list[str] = []

        class Handler(_Quiet):
            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                              functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/", requests

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_embedded_checksums_match_shared_file(kodak_dir):
    rows = [line.split() for line in (kodak_dir / "PIXELS.sha256").read_text().splitlines()
            if line and not line.startswith("#")]
    assert {n: (h, s) for h, n, s in rows} == datasets.KODAK_PIXELS
    assert len(datasets.KODAK_PIXELS) == 24


def test_check_kodak(kodak_dir):
    images = datasets.check("kodak", kodak_dir)
    assert [p.name for p in images] == sorted(datasets.KODAK_PIXELS)
    assert datasets.pixel_sha256(images[3]) == datasets.KODAK_PIXELS["kodim04.png"]


def _linked(src, dst, names):
    dst.mkdir()
    for n in names:
        (dst / n).symlink_to(src / n)
    return dst


def test_check_errors_name_folder_and_problem(kodak_dir, tmp_path):
    names = sorted(datasets.KODAK_PIXELS)
    few = _linked(kodak_dir, tmp_path / "few", names[:23])
    with pytest.raises(DatasetError, match=rf"folder {few} holds 23 images, expected 24"):
        datasets.check("kodak", few)
    odd = _linked(kodak_dir, tmp_path / "odd", names[1:])
    Image.open(kodak_dir / names[0]).crop((0, 0, 700, 512)).save(odd / names[0])
    with pytest.raises(DatasetError, match=r"kodim01.png is 700x512; expected 512x768 or 768x512"):
        datasets.check("kodak", odd)
    with pytest.raises(DatasetError, match=r"folder .*nowhere does not exist"):
        datasets.check("tecnick", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        datasets.check("imagenet")


def test_registry_folders_follow_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LIC_DATASETS", str(tmp_path))
    assert datasets.folder("clic-pro-valid") == tmp_path / "clic-pro-valid"
    assert (datasets.REGISTRY["clic-pro-valid"].count, datasets.REGISTRY["tecnick"].count) == (41, 100)
    with pytest.raises(DatasetError, match=rf"{tmp_path}/tecnick does not exist"):
        datasets.resolve("tecnick")


def test_resolve_folder_and_limit(kodak_dir, tmp_path):
    name, images = datasets.resolve(str(kodak_dir), limit=3)
    assert name == "kodak" and [p.name for p in images] == ["kodim01.png", "kodim02.png", "kodim03.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        datasets.resolve(tmp_path / "empty")
    with pytest.raises(DatasetError, match="neither a registered dataset"):
        datasets.resolve(tmp_path / "missing")


def test_download_kodak_loopback(kodak_dir, tmp_path, serve):
    url, requests = serve(kodak_dir)
    dest = tmp_path / "kodak"
    paths = datasets.download_kodak(dest, base_url=url, progress=False)
    assert [p.name for p in paths] == sorted(datasets.KODAK_PIXELS) and len(requests) == 24
    assert datasets.check("kodak", dest) == paths
    assert (dest / "kodim07.png").read_bytes() == (kodak_dir / "kodim07.png").read_bytes()
    datasets.download_kodak(dest, base_url=url, progress=False)  # all verified: nothing fetched
    assert len(requests) == 24


@pytest.mark.parametrize("damage", ["pixels", "truncated"])
def test_download_rejects_corrupted_file(kodak_dir, tmp_path, serve, damage):
    names = sorted(datasets.KODAK_PIXELS)
    served = _linked(kodak_dir, tmp_path / "served", [n for n in names if n != "kodim05.png"])
    if damage == "pixels":
        im = Image.open(kodak_dir / "kodim05.png").convert("RGB")
        im.putpixel((10, 10), (0, 0, 0))
        im.save(served / "kodim05.png")
    else:
        (served / "kodim05.png").write_bytes((kodak_dir / "kodim05.png").read_bytes()[:5000])
    url, _ = serve(served)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "kodim05.png").write_bytes(b"older file")  # an unverified file is not overwritten
    with pytest.raises(DatasetError, match=r"kodim05.png: .*not written") as err:
        datasets.download_kodak(dest, base_url=url, progress=False)
    assert ("does not match" if damage == "pixels" else "not a decodable image") in str(err.value)
    assert sorted(p.name for p in dest.iterdir()) == names[:5]  # 01..04 kept, no temp files
    assert (dest / "kodim05.png").read_bytes() == b"older file"


def test_download_unreachable(tmp_path):
    with pytest.raises(DatasetError, match="download of http://127.0.0.1:9/kodim01.png failed"):
        datasets.download_kodak(tmp_path, base_url="http://127.0.0.1:9/", timeout=5, progress=False)


def test_cli(kodak_dir, monkeypatch, capsys):
    monkeypatch.setenv("LIC_DATASETS", str(kodak_dir.parent))
    assert datasets.main(["check", "kodak"]) == 0 and "24 images OK" in capsys.readouterr().out
    assert datasets.main(["check", "tecnick"]) == 2 and "tecnick" in capsys.readouterr().err
