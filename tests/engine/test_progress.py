"""Progress callbacks, previews and cancellation."""

from __future__ import annotations

import pytest

from generative_service.engine import EngineJob
from generative_service.schemas import PreviewSpec

from .engine_helpers import STEPS, max_diff, pixels, req, run_one


def test_every_step_is_reported_once_per_job_in_order(engine):
    seen = []
    run_one(engine, req(), on_step=seen.append)
    assert [(s.step, s.total_steps) for s in seen] == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert all(s.preview is None for s in seen)  # not asked for


@pytest.mark.parametrize("sampler", ["dpmpp_2m_karras", "euler", "ddim", "unipc"])
def test_previews_follow_every_n_steps_and_max_px(engine, sampler):
    seen = []
    request = req(sampler=sampler, preview=PreviewSpec(every_n_steps=3, max_px=32))
    out = run_one(engine, request, on_step=seen.append)
    with_preview = [s.step for s in seen if s.preview is not None]
    assert with_preview == [3, 4]  # every 3rd step and the last
    last = seen[-1].preview
    assert last.size == (32, 32) and last.mode == "RGB"
    assert pixels(last).std() > 0.5  # shows something
    assert out.images  # the preview did not disturb the result
    assert max_diff(out.images[0], run_one(engine, req(sampler=sampler)).images[0]) == 0


def test_preview_never_larger_than_the_image(engine):
    seen = []
    run_one(engine, req(preview=PreviewSpec(every_n_steps=1, max_px=1024)), on_step=seen.append)
    assert seen[-1].preview.size == (64, 64)


def test_cancel_one_job_of_a_batch(engine):
    keep, drop = req(seed=21), req(seed=22, prompt="a red dog")
    reported = []

    def is_canceled(job_id: str) -> bool:
        return job_id == "drop" and any(s.step >= 2 for s in reported)  # from step 2 on

    outputs = engine.run(
        [EngineJob("keep", keep), EngineJob("drop", drop)],
        is_canceled=is_canceled,
        on_step=reported.append,
    )
    assert outputs[1].canceled and outputs[1].images == []
    assert not outputs[0].canceled
    assert max_diff(outputs[0].images[0], run_one(engine, keep).images[0]) <= 1
    assert max(s.step for s in reported if s.job_id == "drop") < STEPS  # its owner stopped hearing
    assert max(s.step for s in reported if s.job_id == "keep") == STEPS


def test_cancel_all_stops_at_once_without_decoding(engine, monkeypatch):
    decodes = []
    original = engine.pipe.vae.decode
    monkeypatch.setattr(
        engine.pipe.vae, "decode", lambda *a, **k: decodes.append(1) or original(*a, **k)
    )
    reported = []
    outputs = engine.run(
        [EngineJob("one", req()), EngineJob("two", req(seed=3))],
        is_canceled=lambda job_id: any(s.step >= 1 for s in reported),
        on_step=reported.append,
    )
    assert all(out.canceled and not out.images for out in outputs)
    assert {s.step for s in reported} == {1}
    assert decodes == []
    monkeypatch.undo()
    assert run_one(engine, req()).images  # the next call is unaffected


def test_job_canceled_before_start_is_not_run(engine):
    outputs = engine.run([EngineJob("gone", req())], is_canceled=lambda job_id: True)
    assert outputs[0].canceled and outputs[0].images == []


def test_cancel_during_the_vae_decode_stops_the_decode(engine, monkeypatch):
    entered = []
    decoder = engine.pipe.vae.decoder
    monkeypatch.setattr(
        decoder,
        "forward",
        lambda *a, **k: entered.append(1) or type(decoder).forward(decoder, *a, **k),
    )
    reported = []
    # Canceled once the last step was reported: only the decode is left to interrupt.
    outputs = engine.run(
        [EngineJob("late", req())],
        is_canceled=lambda job_id: any(s.step == STEPS for s in reported),
        on_step=reported.append,
    )
    assert entered == [1]  # the decode began ...
    assert outputs[0].canceled and outputs[0].images == []  # ... and was cut short
    monkeypatch.undo()
    assert run_one(engine, req()).images  # no cancel hook is left behind
    assert not any(module._forward_pre_hooks for module in decoder.modules())
