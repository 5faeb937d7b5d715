"""Untrusted pickles, network directories and encoder files: every crafted file fails fast, typed, small.

Each case is a real file written to disk. The in-process tests use magnitudes that are harmless
for any loader and check the message; ``test_crafted_files_are_bounded`` loads full-size attacks
(gigabyte declarations, /dev/zero, exponential sharing) in a forked child with an address-space
limit and checks that each ends in a typed error within 5 s and +200 MB of resident memory.
``benchmarks/untrusted_files.py`` prints the same measurements as a table.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_official_pickle import _dumps, _Global, _Reduce

import sg3archive
from sg3archive.checkpoints.encoder_file import load_encoder, save_encoder
from sg3archive.checkpoints.network_file import save_networks
from sg3archive.checkpoints.official_pickle import (
    MAX_PICKLE_ARG_BYTES,
    MAX_PICKLE_OBJECTS,
    MAX_PICKLE_TEXT_BYTES,
    count_opcodes,
    read_official_pickle,
)
from sg3archive.checkpoints.safe_read import MAX_JSON_BYTES
from sg3archive.errors import NetworkFormatError, Sg3ArchiveError
from sg3archive.networks import Generator
from sg3archive.networks.bounds import (
    check_network_kwargs,
    discriminator_parameter_count,
    generator_parameter_count,
)
from sg3archive.networks.encoder import build_encoder
from sg3archive.networks.presets import CONFIGS

TIME_LIMIT_S = 5.0
RSS_LIMIT_MB = 200.0
TINY_G = dict(z_dim=8, w_dim=8, c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16,
              mapping_kwargs={"num_layers": 2})
TINY_E = dict(num_ws=4, w_dim=8, img_resolution=16, channels=[8, 8], width=1.0)


# ---- crafting: legacy torch storages, tensors and official-format records ----

def legacy_storage(declared: int, payload: bytes, *, keys: tuple[str, ...] = ("k",), pad: int = 0) -> bytes:
    """A legacy ``torch.save`` stream for one float32 storage that declares ``declared`` elements
    (``pad``: that many empty lists added to its system-info header, which torch's reader ignores)."""

    marker = object()

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "k", "cpu", declared, None) if obj is marker else None

    out = io.BytesIO()
    sys_info = {"protocol_version": 1001, "little_endian": True, **({"pad": [[] for _ in range(pad)]} if pad else {})}
    for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
        pickle.dump(header, out, protocol=2)
    _Pickler(out, protocol=2).dump(marker)
    pickle.dump(list(keys), out, protocol=2)
    out.write(declared.to_bytes(8, "little") + payload)
    return out.getvalue()


def tensor(storage_blob: bytes, size: tuple, stride: tuple, offset: int = 0) -> _Reduce:
    storage = _Reduce(torch.storage._load_from_bytes, (storage_blob,))
    return _Reduce(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, collections.OrderedDict()))


def record(class_name: str, modules: dict | None = None, init_kwargs: dict | None = None,
           params: dict | None = None) -> _Reduce:
    """One persistent network object the way official snapshots store it (source omitted)."""
    state = {"_parameters": params or {}, "_buffers": {}, "_modules": modules or {}, "_init_args": (),
             "_init_kwargs": init_kwargs or {}}
    meta = {"type": "class", "version": 6, "module_src": "# omitted", "class_name": class_name, "state": state}
    return _Reduce(_Global("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


def generator_pickle(init_kwargs: dict, modules: dict | None = None, params: dict | None = None) -> bytes:
    """``{"G_ema": Generator}`` with a StyleGAN3 synthesis (it has an ``input`` layer)."""
    synthesis = record("SynthesisNetwork", {"input": record("SynthesisInput")})
    return _dumps({"G_ema": record("Generator", {"synthesis": synthesis, **(modules or {})}, init_kwargs, params)})


def shared_module_bomb(levels: int = 60) -> bytes:
    """A module tree in which every module holds the next one twice: 2**levels visits to walk it."""
    node = record("Leaf")
    for _ in range(levels):
        node = record("Node", {"a": node, "b": node})
    return generator_pickle(TINY_G, {"mapping": node})


def shared_kwargs_bomb(levels: int = 60) -> bytes:
    """Constructor arguments whose list holds the next list twice at every level."""
    nested: list = []
    for _ in range(levels):
        nested = [nested, nested]
    return generator_pickle({**TINY_G, "mapping_kwargs": {"num_layers": nested}})


# 1-byte opcodes that each make a Python object; none of them is a call the reader charges for.
FLOOD_OPCODES = {"EMPTY_SET": b"\x8f", "EMPTY_LIST": b"]", "EMPTY_DICT": b"}", "MARK": b"(", "NONE+APPEND": b"N"}


def opcode_flood(name: str, count: int) -> bytes:
    """A protocol-4 pickle of ``count`` one-byte object-making opcodes (``NONE+APPEND``: a list
    followed by None, APPEND pairs)."""
    if name == "NONE+APPEND":
        return b"\x80\x04]" + b"Na" * (count // 2) + b"."
    return b"\x80\x04" + FLOOD_OPCODES[name] * count + b"."


EMOJI = "\U0001F600".encode()  # outside Latin-1 and the BMP: Python stores its whole str at 4 bytes a character


def wide_text_pickle(nbytes: int) -> bytes:
    """Red-team F4: one BINUNICODE of ``nbytes`` of UTF-8, ASCII plus one emoji (a 4-byte-a-character str)."""
    text = b"a" * (nbytes - len(EMOJI)) + EMOJI
    return b"\x80\x02X" + struct.pack("<I", len(text)) + text + b"."


def many_short_texts_pickle(count: int) -> bytes:
    """A list of ``count`` SHORT_BINUNICODE strings of 255 bytes each, every one with an emoji."""
    text = b"a" * (255 - len(EMOJI)) + EMOJI
    return b"\x80\x04](" + (b"\x8c\xff" + text) * count + b"e."


def json_flood(nbytes: int) -> bytes:
    """Red-team F5: ``[{},{},...]`` of ``nbytes``; ``json.loads`` builds about 20 times that."""
    return ("[" + "{}," * ((nbytes - 4) // 3) + "{}]").encode()


def tiny_network_dir(root: Path, *, nan: bool = False) -> Path:
    """A real network directory with a tiny generator (optionally one weight NaN)."""
    torch.manual_seed(0)
    G = Generator(**TINY_G)
    if nan:
        with torch.no_grad():
            G.mapping.fc0.weight[0, 0] = float("nan")
    save_networks({"G_ema": G}, str(root))
    return root


def edit_index(root: Path, edit) -> Path:
    index = json.loads((root / "network.json").read_text())
    edit(index)
    (root / "network.json").write_text(json.dumps(index))
    return root


def tiny_encoder_dir(root: Path, *, nan: bool = False) -> Path:
    torch.manual_seed(0)
    encoder = build_encoder("single", **TINY_E)
    if nan:
        with torch.no_grad():
            next(encoder.parameters()).view(-1)[0] = float("inf")
    save_encoder(encoder, str(root), generator_fingerprint="0" * 64)
    return root


def craft_full_size(folder: Path) -> dict[str, tuple[str, str]]:
    """The full-size attacks of issue 11 (items 5 and 6): name → (loader, path). Never load these
    in the test process: an unbounded loader needs gigabytes or hours for them."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[str, str]] = {}

    def pkl(name: str, data: bytes) -> None:
        (folder / f"{name}.pkl").write_bytes(data)
        cases[name] = ("network", str(folder / f"{name}.pkl"))

    one = legacy_storage(1, b"\0\0\x80?")
    pkl("pickle: shared-module bomb", shared_module_bomb())
    pkl("pickle: shared-kwargs bomb", shared_kwargs_bomb())
    pkl("pickle: 8 GB storage, 16 bytes", generator_pickle(TINY_G, params={"w": tensor(legacy_storage(2**31, b"\0" * 16), (4,), (1,))}))
    pkl("pickle: unfilled 8 GB storage",
        generator_pickle(TINY_G, params={"w": tensor(legacy_storage(2**31, b"", keys=()), (2**31,), (1,))}))
    pkl("pickle: stride 0, 2**30 elements", generator_pickle(TINY_G, params={"w": tensor(one, (2**30,), (0,))}))
    pkl("pickle: channel_max 2**15", generator_pickle({**TINY_G, "channel_base": 2**17, "channel_max": 2**15}))
    pkl("pickle: num_layers 200000", generator_pickle({**TINY_G, "num_layers": 200_000}))
    for op in ("EMPTY_SET", "EMPTY_LIST", "MARK"):
        pkl(f"pickle: 8 MB of {op} opcodes", opcode_flood(op, 8 << 20))
    pkl("pickle: 100 MB str with an emoji", wide_text_pickle(100 << 20))
    pkl("pickle: 250,000 short strs, emoji", many_short_texts_pickle(250_000))

    def net(name: str, make) -> None:
        cases[name] = ("network", str(make(folder / re.sub(r"[^A-Za-z0-9]+", "_", name))))

    def dev_zero(root: Path) -> Path:
        tiny_network_dir(root)
        (root / "G_ema.safetensors").unlink()
        (root / "G_ema.safetensors").symlink_to("/dev/zero")
        return root

    def sparse(root: Path) -> Path:
        tiny_network_dir(root)
        os.truncate(root / "G_ema.safetensors", 4 << 30)  # 4 GB, sparse: costs no disk
        return root

    net("directory: weights -> /dev/zero", dev_zero)
    net("directory: 4 GB weights file", sparse)
    net("directory: index names ../", lambda root: edit_index(
        tiny_network_dir(root), lambda i: i["networks"]["G_ema"].update(weights="../../etc/passwd")))
    net("directory: channel_max 2**15", lambda root: edit_index(
        tiny_network_dir(root), lambda i: i["networks"]["G_ema"]["init_kwargs"].update(channel_base=2**17, channel_max=2**15)))

    def json_bomb(root: Path) -> Path:
        tiny_network_dir(root)
        (root / "network.json").write_bytes(json_flood(16 << 20))
        return root

    net("directory: 16 MB network.json [{},…]", json_bomb)

    def encoder_zero(root: Path) -> Path:
        tiny_encoder_dir(root)
        (root / "encoder.safetensors").unlink()
        (root / "encoder.safetensors").symlink_to("/dev/zero")
        return root

    cases["encoder: weights -> /dev/zero"] = ("encoder", str(encoder_zero(folder / "enc_zero")))
    root = tiny_encoder_dir(folder / "enc_wide")
    doc = json.loads((root / "encoder.json").read_text())
    doc["init_kwargs"].update(channels=[4096] * 16, width=16.0, img_resolution=2048)
    (root / "encoder.json").write_text(json.dumps(doc))
    cases["encoder: channels 4096 x 16"] = ("encoder", str(root))
    root = tiny_encoder_dir(folder / "enc_json")
    (root / "encoder.json").write_bytes(json_flood(16 << 20))
    cases["encoder: 16 MB encoder.json [{},…]"] = ("encoder", str(root))
    return cases


# ---- the isolated runner: one forked child per case, address space limited, peak RSS measured ----

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _load_case(kind: str, path: str) -> None:
    if kind == "encoder":
        load_encoder(path)
    else:
        sg3archive.load_network(path)


def _child(kind: str, path: str, write_fd: int, slack_mb: int) -> None:
    """In the forked child: reset the RSS peak, limit the address space, load, report as JSON."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (Linux >= 4.0), so the peak below is this load's
    start_kb = _status_kb("VmRSS")
    limit = _status_kb("VmSize") * 1024 + slack_mb * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    begin = time.perf_counter()
    try:
        _load_case(kind, path)
        outcome, typed = "loaded without error", False
    except Sg3ArchiveError as exc:
        outcome, typed = f"{type(exc).__name__}: {exc}", True
    except BaseException as exc:  # noqa: BLE001 - reported, not hidden
        outcome, typed = f"{type(exc).__name__}: {exc}", False
    seconds = time.perf_counter() - begin
    rss_mb = (_status_kb("VmHWM") - start_kb) / 1024
    os.write(write_fd, json.dumps({"outcome": outcome[:300], "typed": typed, "seconds": seconds, "rss_mb": rss_mb}).encode())
    os._exit(0)


def run_forked(cases: dict[str, tuple[str, str]], timeout: float = TIME_LIMIT_S, slack_mb: int = 1024) -> dict[str, dict]:
    """Load each case in a child forked from this (torch-importing) process; kill it after ``timeout``.

    Only call this from a process that has not started extra threads (the runner's ``main``).
    """
    results = {}
    for name, (kind, path) in cases.items():
        read_fd, write_fd = os.pipe()
        begin = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(kind, path, write_fd, slack_mb)
        os.close(write_fd)
        while time.perf_counter() - begin < timeout + 1 and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.01)
        else:
            if time.perf_counter() - begin >= timeout + 1:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        data = os.read(read_fd, 1 << 16)
        os.close(read_fd)
        results[name] = json.loads(data) if data else {
            "outcome": f"killed (no answer within {timeout + 1:.0f} s, or the child died)", "typed": False,
            "seconds": time.perf_counter() - begin, "rss_mb": float("nan"),
        }
    return results


def main(argv: list[str]) -> None:
    """``python tests/test_untrusted_networks.py FOLDER``: craft the full-size cases there, load each
    in a forked child, print the results as JSON (what the test and the benchmark read)."""
    torch.set_num_threads(1)
    cases = craft_full_size(Path(argv[0]))
    print(json.dumps(run_forked(cases)))


@pytest.fixture(scope="module")
def isolated_results(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("untrusted")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, str(folder)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


FULL_SIZE_CASES = [
    "pickle: shared-module bomb", "pickle: shared-kwargs bomb", "pickle: 8 GB storage, 16 bytes",
    "pickle: unfilled 8 GB storage", "pickle: stride 0, 2**30 elements", "pickle: channel_max 2**15",
    "pickle: num_layers 200000", "pickle: 8 MB of EMPTY_SET opcodes", "pickle: 8 MB of EMPTY_LIST opcodes",
    "pickle: 8 MB of MARK opcodes", "directory: weights -> /dev/zero", "directory: 4 GB weights file",
    "pickle: 100 MB str with an emoji", "pickle: 250,000 short strs, emoji",
    "directory: index names ../", "directory: channel_max 2**15", "directory: 16 MB network.json [{},…]",
    "encoder: weights -> /dev/zero", "encoder: channels 4096 x 16", "encoder: 16 MB encoder.json [{},…]",
]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak RSS")
@pytest.mark.parametrize("name", FULL_SIZE_CASES)
def test_crafted_files_are_bounded(isolated_results: dict[str, dict], name: str) -> None:
    result = isolated_results[name]
    assert result["typed"], result["outcome"]
    assert result["seconds"] < TIME_LIMIT_S, result
    assert result["rss_mb"] < RSS_LIMIT_MB, result


# ---- in-process: harmless magnitudes, precise messages ----

def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(data)
    return path


def test_shared_module_tree_is_refused_without_walking_it(tmp_path: Path) -> None:
    data = shared_module_bomb(levels=12)  # 4096 visits: quick even for a naive walk
    assert len(data) < 7 * 1024
    with pytest.raises(NetworkFormatError, match="appears twice"):
        sg3archive.load_network(_write(tmp_path, data))


def test_shared_kwargs_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(NetworkFormatError, match="more than 10000 values"):
        sg3archive.load_network(_write(tmp_path, shared_kwargs_bomb(levels=14)))


TOO_MANY_OBJECTS = (
    rf"a pickle of more than {MAX_PICKLE_OBJECTS:,} objects.* is far beyond any StyleGAN3 snapshot "
    r"\(at most about 60,000\); the file is damaged or hostile\.$"
)


@pytest.mark.parametrize("op", sorted(FLOOD_OPCODES))
def test_opcode_flood_is_refused_before_unpickling(tmp_path: Path, op: str, monkeypatch) -> None:
    """Red-team F2: one object per byte, no call charged. Refused by counting, before any object is made."""
    import sg3archive.checkpoints.official_pickle as official

    path = _write(tmp_path, opcode_flood(op, MAX_PICKLE_OBJECTS + 1))
    monkeypatch.setattr(official, "_SnapshotUnpickler", None)  # any attempt to unpickle would fail untyped
    with pytest.raises(NetworkFormatError, match=re.escape(repr(str(path))) + ": " + TOO_MANY_OBJECTS) as info:
        sg3archive.load_network(path)
    assert "\n" not in str(info.value)


def test_opcode_flood_in_a_storage_header_is_refused() -> None:
    """The small pickles heading each tensor storage share the file's budget (they are unpickled too)."""
    flood = b"\x80\x02" + b"]" * MAX_PICKLE_OBJECTS + b"."
    with pytest.raises(NetworkFormatError, match=r"counting the headers of its tensor storages\) is far beyond"):
        read_official_pickle(_dumps({"t": tensor(flood + legacy_storage(1, b"\0" * 4), (1,), (1,))}))
    # Valid storages whose headers hold 5,000 lists each (10,000 opcodes): fine one by one, not 40 of them.
    storages = [_Reduce(torch.storage._load_from_bytes, (legacy_storage(1, struct.pack("<f", i), pad=5_000),))
                for i in range(40)]
    assert len(read_official_pickle(_dumps({"s": storages[:5]}))["s"]) == 5
    with pytest.raises(NetworkFormatError, match=r"counting the headers of its tensor storages\)"):
        read_official_pickle(_dumps({"s": storages}))


def test_opcode_count_matches_pickletools_and_official_snapshots_fit(sg3_reference_dir: Path) -> None:
    """The counter skips arguments by length; it must agree with pickletools on every protocol."""
    import pickletools

    value = {"s": "line\nbreak é", "b": b"\0" * 300, "big": bytes(70_000), "n": [2**70, -1, 3.5, None, True],
             "t": (1, 2), "fs": frozenset({1}), "ba": bytearray(b"xy"), "g": collections.OrderedDict(a=1)}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(value, protocol=protocol)
        assert count_opcodes(data, 10**6) == sum(1 for _ in pickletools.genops(data)), protocol
    assert count_opcodes(opcode_flood("MARK", 1000), 10) == 11  # stops counting past the limit
    for folder in ("t64", "r64"):
        data = (sg3_reference_dir / folder / "network-snapshot.pkl").read_bytes()
        assert count_opcodes(data, MAX_PICKLE_OBJECTS) == sum(1 for _ in pickletools.genops(data))
        assert count_opcodes(data, MAX_PICKLE_OBJECTS) < MAX_PICKLE_OBJECTS // 10  # 27,000 of 300,000
        assert read_official_pickle(data)["G_ema"].class_name == "Generator"


TOO_LONG = r"a {op} argument of {n} bytes{where} is far beyond any StyleGAN3 snapshot \(at most 1,048,576 outside"
LINE = b"a" * MAX_PICKLE_ARG_BYTES + EMOJI


@pytest.mark.parametrize(
    ("data", "op", "n"),
    [
        (wide_text_pickle(MAX_PICKLE_ARG_BYTES + 1), "BINUNICODE", MAX_PICKLE_ARG_BYTES + 1),
        (b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b"a" * 64, "BINUNICODE8", 1 << 40),  # truncated too
        (b"\x80\x02V" + b"a" * MAX_PICKLE_ARG_BYTES + b"\\U0001f600\n.", "UNICODE", "more than 1,048,576"),
        (b"\x80\x02T" + struct.pack("<i", len(LINE)) + LINE + b".", "BINSTRING", len(LINE)),
        (b"\x80\x02B" + struct.pack("<I", len(LINE)) + LINE + b".", "BINBYTES", len(LINE)),
        (b"\x80\x02c" + LINE + b"\nx\n.", "GLOBAL", "more than 1,048,576"),
    ],
    ids=["BINUNICODE", "BINUNICODE8", "UNICODE", "BINSTRING", "BINBYTES", "GLOBAL"],
)
def test_long_text_is_refused_before_unpickling(tmp_path: Path, monkeypatch, data: bytes, op: str, n) -> None:
    """Red-team F4: a str of ASCII plus one emoji takes 4 bytes a character (and the pure-Python unpickler
    copies it first). Each text or bytes argument outside tensor data is measured before any is decoded."""
    import sg3archive.checkpoints.official_pickle as official

    path = _write(tmp_path, data)
    monkeypatch.setattr(official, "_SnapshotUnpickler", None)  # any attempt to unpickle would fail untyped
    count = f"{n:,}" if isinstance(n, int) else n
    with pytest.raises(NetworkFormatError, match=TOO_LONG.format(op=op, n=count, where="")) as info:
        sg3archive.load_network(path)
    assert "\n" not in str(info.value)


def test_text_in_all_is_capped_and_storages_are_not(tmp_path: Path, monkeypatch) -> None:
    """Short strings add up (``MAX_PICKLE_TEXT_BYTES`` in all); a storage's BINBYTES stream is tensor
    data and may be any size; its header pickles share the text budget and per-argument cap."""
    import sg3archive.checkpoints.official_pickle as official

    count = MAX_PICKLE_TEXT_BYTES // 255 + 1
    path = _write(tmp_path, many_short_texts_pickle(count))
    with monkeypatch.context() as patch:
        patch.setattr(official, "_SnapshotUnpickler", None)
        with pytest.raises(NetworkFormatError, match="its text and bytes outside tensor data exceed 16,777,216 bytes"):
            sg3archive.load_network(path)
    with pytest.raises(NetworkFormatError, match="holds a list at its top level"):  # under the cap: unpickled
        read_official_pickle(many_short_texts_pickle(count - 200))
    values = torch.arange(1 << 19, dtype=torch.float32)  # 2 MiB of data in one BINBYTES
    loaded = read_official_pickle(_dumps({"t": tensor(legacy_storage(1 << 19, values.numpy().tobytes()), (1 << 19,), (1,))}))
    assert torch.equal(loaded["t"], values)

    def storage_with_info(info: dict) -> bytes:
        blob = legacy_storage(1, b"\0" * 4)
        plain = pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
        assert blob.count(plain) == 1
        return blob.replace(plain, pickle.dumps({"protocol_version": 1001, "little_endian": True, **info}, protocol=2))

    long_header = storage_with_info({"x": "a" * MAX_PICKLE_ARG_BYTES + "\U0001F600"})
    where = r" \(in the header of a tensor storage\)"
    with pytest.raises(NetworkFormatError, match=TOO_LONG.format(op="BINUNICODE", n="1,048,580", where=where)):
        read_official_pickle(_dumps({"t": tensor(long_header, (1,), (1,))}))
    storages = [_Reduce(torch.storage._load_from_bytes, (storage_with_info({"x": "a" * (1 << 20)}),)) for _ in range(17)]
    assert len(read_official_pickle(_dumps({"s": storages[:15]}))["s"]) == 15
    with pytest.raises(NetworkFormatError, match=r"outside tensor data \(counting the headers of its tensor storages\) exceed"):
        read_official_pickle(_dumps({"s": storages}))


@pytest.mark.parametrize("kind", ["network", "encoder"])
def test_large_json_is_refused_unparsed(tmp_path: Path, kind: str) -> None:
    """Red-team F5: ``[{},{},...]`` parses to about 20 times its size before any type check, so
    network.json and encoder.json (a few KB in real directories) are refused over 1 MiB, unread."""
    assert MAX_JSON_BYTES == 1 << 20
    root = tiny_network_dir(tmp_path / "net") if kind == "network" else tiny_encoder_dir(tmp_path / "enc")
    name = f"{kind}.json"
    (root / name).write_bytes(json_flood(MAX_JSON_BYTES + 3))
    expected = rf"{name} is 1\.0 MB, more than the 1\.0 MB a description file can hold"
    with pytest.raises(NetworkFormatError, match=expected) as info:
        sg3archive.load_network(root) if kind == "network" else load_encoder(str(root))
    assert "\n" not in str(info.value)
    bundled = Path(sg3archive.__file__).parent / "assets" / f"default_{kind}" / name
    assert bundled.stat().st_size < MAX_JSON_BYTES // 100


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (legacy_storage(1 << 16, b"\0" * 16), r"declares 65,536 elements \(262,144 bytes\) but holds 16 bytes"),
        (legacy_storage(4, b"\0" * 64), "declares 4 elements .* but holds 64 bytes"),
        (legacy_storage(4, b"\0" * 16, keys=()), "declares data it does not contain"),
    ],
    ids=["more-declared-than-present", "trailing-bytes", "declared-but-unfilled"],
)
def test_storage_must_be_filled_from_bytes_in_the_file(blob: bytes, match: str) -> None:
    with pytest.raises(NetworkFormatError, match=match):
        read_official_pickle(_dumps({"t": tensor(blob, (4,), (1,))}))


@pytest.mark.parametrize(
    ("size", "stride", "match"),
    [((1000,), (0,), "zero or overlapping stride"), ((30, 30), (1, 1), "zero or overlapping stride")],
    ids=["stride-0", "overlapping"],
)
def test_views_that_repeat_storage_are_refused(size: tuple, stride: tuple, match: str) -> None:
    blob = legacy_storage(64, b"\0" * 256)
    with pytest.raises(NetworkFormatError, match=match):
        read_official_pickle(_dumps({"t": tensor(blob, size, stride)}))


def test_many_views_of_one_storage_are_capped() -> None:
    blob = legacy_storage(1 << 16, b"\0" * (1 << 18))  # 256 kB of data, viewed 40 times: 10 MB
    storage = _Reduce(torch.storage._load_from_bytes, (blob,))
    views = [_Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, (1 << 16,), (1,), False, collections.OrderedDict()))
             for _ in range(40)]
    with pytest.raises(NetworkFormatError, match="more than the file holds"):
        read_official_pickle(_dumps({"views": views}))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"channel_max": 2**15}, r"channel_max must be an integer from 1 to 2048, got 32768"),
        ({"num_layers": 65}, r"num_layers must be an integer from 1 to 64, got 65"),
        ({"img_resolution": 24}, r"img_resolution must be a power-of-two integer"),
        ({"z_dim": True}, r"z_dim must be an integer"),
        ({"fused_modconv": True}, r"does not use: fused_modconv"),
    ],
    ids=["channel_max", "num_layers", "resolution", "bool-for-int", "unknown"],
)
def test_pickle_kwargs_are_bounded_before_building(tmp_path: Path, change: dict, match: str) -> None:
    with pytest.raises(NetworkFormatError, match=match):
        sg3archive.load_network(_write(tmp_path, generator_pickle({**TINY_G, **change})))


def test_pickle_config_larger_than_its_weights_is_refused_before_building(tmp_path: Path) -> None:
    with pytest.raises(NetworkFormatError, match="settings describe .* weights but the file holds only 0"):
        sg3archive.load_network(_write(tmp_path, generator_pickle({**TINY_G, "channel_base": 32768, "channel_max": 512})))


def test_weights_outside_the_directory_are_refused(tmp_path: Path) -> None:
    tiny_network_dir(tmp_path / "real")
    root = edit_index(tiny_network_dir(tmp_path / "net"), lambda i: i["networks"]["G_ema"].update(weights="../real/G_ema.safetensors"))
    with pytest.raises(NetworkFormatError, match="not a plain file name"):
        sg3archive.load_network(root)


def test_symlinked_weights_are_refused(tmp_path: Path) -> None:
    tiny_network_dir(tmp_path / "real")
    root = tiny_network_dir(tmp_path / "net")
    (root / "G_ema.safetensors").unlink()
    (root / "G_ema.safetensors").symlink_to(tmp_path / "real" / "G_ema.safetensors")
    with pytest.raises(NetworkFormatError, match="is a symlink"):
        sg3archive.load_network(root)


def test_oversize_weights_are_refused_before_reading(tmp_path: Path) -> None:
    root = tiny_network_dir(tmp_path / "net")
    with open(root / "G_ema.safetensors", "ab") as f:
        f.write(b"\0" * (20 << 20))
    with pytest.raises(NetworkFormatError, match=r"G_ema.safetensors is 20\.\d MB, more than the 1\.\d MB"):
        sg3archive.load_network(root)


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    root = tiny_network_dir(tmp_path / "net", nan=True)
    expected = r"network file .*G_ema.safetensors: tensor mapping.fc0.weight contains NaN/Inf; the file is damaged — re-export it"
    with pytest.raises(NetworkFormatError, match=expected):
        sg3archive.load_network(root)
    with pytest.raises(NetworkFormatError, match="contains NaN/Inf"):
        sg3archive.load_network(root / "G_ema.safetensors")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda i: i["networks"]["G_ema"]["init_kwargs"].update(img_resolution="256"),
         r"network.json \[G_ema\]: init_kwargs.img_resolution must be a power-of-two integer from 4 to 2048, got the string '256'"),
        (lambda i: i["networks"]["G_ema"]["init_kwargs"].update(c_dim=None), r"init_kwargs.c_dim must be an integer"),
        (lambda i: i["networks"]["G_ema"].update(init_kwargs=[1, 2]), r"'init_kwargs' must be a JSON object, but it is a list"),
        (lambda i: i["networks"]["G_ema"]["init_kwargs"].update(mapping_kwargs=[2]), r"init_kwargs.mapping_kwargs must be an object"),
        (lambda i: i.update(networks=[["G_ema"]]), r"'networks' must be a JSON object"),
        (lambda i: i["networks"].update(G_ema="G_ema.safetensors"), r"is not an sg3archive network description"),
        (lambda i: i["networks"]["G_ema"].update(fingerprint=None), r"'fingerprint' must be a string, but it is missing"),
        (lambda i: i.update(format_version="1"), r"network format version '1'"),
    ],
    ids=["string-resolution", "null-c_dim", "list-kwargs", "list-mapping", "list-networks", "string-entry",
         "null-fingerprint", "string-version"],
)
def test_wrongly_typed_json_is_one_line(tmp_path: Path, edit, match: str) -> None:
    root = edit_index(tiny_network_dir(tmp_path / "net"), edit)
    with pytest.raises(NetworkFormatError, match=match) as info:
        sg3archive.load_network(root)
    assert "\n" not in str(info.value)


def test_encoder_files_are_bounded(tmp_path: Path) -> None:
    root = tiny_encoder_dir(tmp_path / "nan", nan=True)
    with pytest.raises(NetworkFormatError, match="encoder file .*encoder.safetensors: tensor .* contains NaN/Inf"):
        load_encoder(str(root))
    root = tiny_encoder_dir(tmp_path / "typed")
    doc = json.loads((root / "encoder.json").read_text())
    doc["init_kwargs"]["img_resolution"] = "16"
    (root / "encoder.json").write_text(json.dumps(doc))
    with pytest.raises(NetworkFormatError, match="init_kwargs.img_resolution must be a power-of-two integer .* got the string '16'"):
        load_encoder(str(root))
    root = tiny_encoder_dir(tmp_path / "link")
    (root / "encoder.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (root / "encoder.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(NetworkFormatError, match="is a symlink"):
        load_encoder(str(root))


# ---- the bounds admit every official configuration, and the counts are exact ----

@pytest.mark.parametrize("resolution", [16, 64, 256, 512, 1024])
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("doubled", [False, True], ids=["published", "cbase-doubled"])
def test_every_official_configuration_is_admitted(config: str, resolution: int, doubled: bool) -> None:
    kwargs = dict(z_dim=512, w_dim=512, c_dim=1000, img_resolution=resolution, img_channels=3,
                  mapping_kwargs={"num_layers": 2}, magnitude_ema_beta=0.999, num_fp16_res=4, conv_clamp=256,
                  **CONFIGS[config])
    if doubled:
        kwargs.update(channel_base=2 * kwargs["channel_base"], channel_max=2 * kwargs["channel_max"])
    assert check_network_kwargs("Generator", kwargs, "x") > 0
    d_kwargs = dict(c_dim=1000, img_resolution=resolution, img_channels=3, architecture="resnet", channel_base=32768,
                    channel_max=512, num_fp16_res=4, conv_clamp=256, cmap_dim=None, block_kwargs={"freeze_layers": 0},
                    mapping_kwargs={}, epilogue_kwargs={"mbstd_group_size": 4})
    assert check_network_kwargs("Discriminator", d_kwargs, "x") > 0


@pytest.mark.parametrize("folder", ["t64", "r64"])
def test_parameter_counts_match_built_networks(sg3_reference_dir: Path, folder: str) -> None:
    from sg3archive.networks import Discriminator

    g_kwargs = json.loads((sg3_reference_dir / folder / "G_init_kwargs.json").read_text())
    d_kwargs = json.loads((sg3_reference_dir / folder / "D_init_kwargs.json").read_text())
    for cls, count, kwargs in [(Generator, generator_parameter_count, g_kwargs),
                               (Discriminator, discriminator_parameter_count, d_kwargs)]:
        assert count(kwargs) == sum(v.numel() for v in cls(**kwargs).state_dict().values())
    conditional = dict(TINY_G, c_dim=5, num_layers=6, num_critical=1, use_radial_filters=True, conv_kernel=1)
    assert generator_parameter_count(conditional) == sum(v.numel() for v in Generator(**conditional).state_dict().values())


if __name__ == "__main__":
    main(sys.argv[1:])
