"""The train-encoder Prefect flow under Prefect's test harness (a real temporary server)."""

from __future__ import annotations

import pytest

from sg3archive.checkpoints.encoder_file import load_encoder


def test_train_encoder_flow_trains_exports_and_publishes_artifacts(prefect_harness, sg3_reference_dir, tmp_path):
    from prefect.client.orchestration import get_client

    import sg3archive
    from flows.train_encoder import train_encoder_flow

    net = str(sg3_reference_dir / "t64" / "network-snapshot.pkl")
    config = dict(encoder="single", width=0.25, steps=3, batch_size=2, image_every=0, lpips_net=None,
                  log_every=1, sample_every=3, checkpoint_every=3)
    state = train_encoder_flow(out_dir=str(tmp_path / "run"), network=net, export_dir=str(tmp_path / "enc"),
                               device="cpu", config=config, return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["step"] == 3 and summary["encoder_fingerprint"]
    encoder = load_encoder(str(tmp_path / "enc"), generator=sg3archive.load_network(net))
    assert encoder.fingerprint == summary["encoder_fingerprint"]

    import anyio

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    keys = {a.key for a in anyio.run(artifacts)}
    assert {"encoder-training-metrics", "encoder-training-samples"} <= keys


def test_train_encoder_flow_rejects_bad_settings(prefect_harness, tmp_path):
    from flows.train_encoder import train_encoder_flow

    state = train_encoder_flow(out_dir=str(tmp_path / "run"), config={"lr": 1.0}, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="lr 1.0 is outside"):
        state.result()
