import pytest
import torch

from dpo_diff.backends.diffusers_sd import StableDiffusionBackend
from dpo_diff.loading import ModelNotFoundError


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++", "pndm"])
@pytest.mark.parametrize("which", ["tiny_sd", "tiny_sd_v"])
def test_own_loop_reproduces_stable_diffusion_pipeline(which, scheduler, request):
    from diffusers import StableDiffusionPipeline

    path = request.getfixturevalue(which)
    backend = StableDiffusionBackend.from_pretrained(path, scheduler=scheduler)
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = backend.new_scheduler()
    gens = [torch.Generator().manual_seed(3), torch.Generator().manual_seed(7)]
    ref = pipe("a red dog", negative_prompt="blurry", num_inference_steps=6, guidance_scale=7.5, generator=gens,
               num_images_per_prompt=2, output_type="pt").images
    ours = backend.generate(["a red dog"] * 2, ["blurry"] * 2, [3, 7], steps=6, guidance_scale=7.5)
    assert ours.shape == ref.shape == (2, 3, 16, 16)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # Different seeds give different images, and CFG <= 1 (no negative prompt) matches too.
    assert (ours[0] - ours[1]).abs().max() > 1e-3
    ref1 = pipe("a red dog", num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(5),
                output_type="pt").images
    torch.testing.assert_close(backend.generate(["a red dog"], [""], [5], steps=4, guidance_scale=1.0), ref1,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_formula(backend, prediction_type):
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    abar = 0.37
    x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * eps
    out = {"epsilon": eps, "v_prediction": abar**0.5 * eps - (1 - abar) ** 0.5 * x0, "sample": x0}[prediction_type]
    old = backend.prediction_type
    backend.prediction_type = prediction_type
    try:
        torch.testing.assert_close(backend.predict_x0(out, x_t, abar), x0, atol=1e-5, rtol=1e-5)
    finally:
        backend.prediction_type = old


def test_alpha_bar_matches_scheduler(backend):
    sched = backend.new_scheduler(10)
    for t in sched.timesteps[:3]:
        assert backend.alpha_bar(sched, t) == pytest.approx(float(sched.alphas_cumprod[int(t)]))
    # Fractional timesteps interpolate in sigma space and stay between the neighbours.
    a = backend.alpha_bar(sched, 500.5)
    assert float(sched.alphas_cumprod[501]) < a < float(sched.alphas_cumprod[500])


def test_weights_are_frozen(backend):
    assert not any(p.requires_grad for m in (backend.unet, backend.vae, backend.text_encoder) for p in m.parameters())


def test_tokenizer_is_the_real_clip_bpe(backend):
    assert len(backend.tokenizer) == 49408
    assert backend.tokenize(["a photo of a cat"])[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_missing_model_errors_are_fast_and_clear(tmp_path, tiny_sd):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        StableDiffusionBackend.from_pretrained(str(tmp_path / "nope" / "sd"))
    with pytest.raises(ModelNotFoundError, match="hub cannot be reached|not in the Hugging Face cache"):
        StableDiffusionBackend.from_pretrained("someone/not-a-real-model-xyz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        StableDiffusionBackend.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown scheduler"):
        StableDiffusionBackend.from_pretrained(tiny_sd, scheduler="lms")
    with pytest.raises(ValueError, match="unknown dtype"):
        StableDiffusionBackend.from_pretrained(tiny_sd, dtype="int8")


def test_missing_tokenizer_files_are_detected(tmp_path, tiny_sd):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    for f in (broken / "tokenizer").iterdir():
        f.unlink()
    with pytest.raises((ModelNotFoundError, ValueError), match="tokenizer"):
        StableDiffusionBackend.from_pretrained(str(broken))


def test_load_backend_picks_the_adapter_from_model_index(tiny_sd, tmp_path):
    """``model_index.json``'s pipeline class picks the backend; others are refused with the supported list."""
    import json
    import shutil

    from dpo_diff.backends.base import BACKENDS, UnsupportedModelError, load_backend

    assert type(load_backend(tiny_sd)).__name__ == "StableDiffusionBackend"
    other = tmp_path / "other"
    shutil.copytree(tiny_sd, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(UnsupportedModelError, match="KandinskyPipeline") as e:
        load_backend(str(other))
    assert all(name in str(e.value) for name in BACKENDS)
    (other / "model_index.json").write_text("{not json")
    with pytest.raises(UnsupportedModelError, match="not valid JSON"):
        load_backend(str(other))
    with pytest.raises(ValueError, match="unknown dtype"):
        load_backend(tiny_sd, dtype="int8")


def test_auto_dtype_is_fp32_on_cpu(tiny_sd):
    from dpo_diff.backends.base import load_backend

    assert load_backend(tiny_sd, dtype="auto").dtype == torch.float32
