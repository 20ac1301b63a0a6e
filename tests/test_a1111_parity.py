"""A whole generation through the extension's A1111 path equals the official RIVAL loop (txt2img here; inpainting
through img2img further down, with its own notes).

The stub's ``process_images`` runs with the real ``scripts/rival.py`` attached, the fake model in float64,
the editing start (``init_latent`` "inverted": nothing random) and the reference prompt null or the prompt.
``official_rival`` (independent: VP, integer timesteps, 4-row batch, per-module counters) is adapted to
A1111's endpoints:

* A1111's **DDIM** (timestep sampler) calls the model at t = 981, ..., 1 + k (``steps - 1`` calls) and
  stops at level t = 1: the official loop after ``steps - 1`` calls. Latents are VP; AdaIN is applied by
  the extension to the guided eps (``cfg_after_cfg``).
* **Euler + schedule type DDIM** (k-diffusion) visits the official sigmas and ends, as the official loop,
  at sigma_min = level abar_0 (``steps`` calls). Latents are VE: VP = x / sqrt(1 + sigma^2); AdaIN is
  applied to the guided x0 in its eps form.
* The stub's CFG batch is [cond rows, uncond rows]; the extension adds the reference rows (one shared row
  for the null prompt, whose ref-cond and ref-uncond texts are the same) where the official batch is
  [ref-uncond, gen-uncond, ref-cond, gen-cond].

Two comparisons per case. *Independent*: the official loop inverts z0 itself in float64; the extension's
chain is float32 by design (``encode_reference`` returns float32, so ``invert`` stores float32 nodes and
``A1111Eps`` returns float32 eps): ~1e-7, the float32 round-off, and the bound cannot be tighter through the
A1111 path. *Loop*: the official loop is given the extension's chain (as the VP float32 latents the
reference rows are fed) and the first model input; then the DDIM loops agree to 1e-14. For Euler two float32
roundings remain, both of values A1111 itself keeps in float32: the sigmas handed to the sampler (the
``sampler_noise_scheduler_override`` of ``webui/sampling.py`` uses ``sigmas.float()``; k-diffusion passes the sigma as
``sigmas[i] * s_in`` with ``s_in = x.new_ones``, float32 because A1111's noise is float32): 4e-8 .. 1.2e-7.
Handed float64 sigmas and float64 noise (test below), Euler agrees to 1.5e-8 (10 steps) / 7.6e-9 (50): what
is left is ``RivalJob.on_cfg_after_cfg`` building the AdaIN sigma with ``torch.full(...)`` in the default
float32 (verified: with ``dtype=torch.float64`` there it is 9.6e-10 / 3.2e-10; harmless in A1111, whose
sigmas are float32 values). Every model input is compared too (the latent at each ``cfg_denoiser``
callback): plain, reference-only (t > t_align), concat, AdaIN (t > t_early) and after-AdaIN steps are all
among them (asserted).

Measured (torch CPU, float64 fake SD1 model, 64x64; "loop" is the worst model input, the final latent
included):

=============================  =====  ===============  ===========  ========  =========
case                           steps  sampler          independent  chain     loop
=============================  =====  ===============  ===========  ========  =========
null prompt, editing           10     DDIM             1.3e-7       9.4e-8    1.2e-14
prompt, variation              10     DDIM             1.5e-7       9.1e-8    8.6e-15
null prompt, editing           50     DDIM             3.0e-7       1.9e-7    1.0e-14
prompt, variation              50     DDIM             3.1e-7       1.7e-7    8.8e-15
null prompt, editing           10     Euler (DDIM)     1.3e-7       1.0e-7    7.4e-8
prompt, variation              10     Euler (DDIM)     1.5e-7       1.0e-7    1.2e-7
null prompt, editing           50     Euler (DDIM)     2.7e-7       1.7e-7    6.2e-8
prompt, variation              50     Euler (DDIM)     2.8e-7       1.9e-7    5.8e-8
prompt, float64 sigmas/noise   10     Euler (DDIM)                            3.0e-8
prompt, float64 sigmas/noise   50     Euler (DDIM)                            1.1e-8
=============================  =====  ===============  ===========  ========  =========

The whole file takes ~50 s on 2 cores (50-step runs ~3 s each plus the official loops).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch
from harness import attach, enabled, fake_model, reference_image, stub_environment
from modules import scripts
from official_rival import OfficialConfig, OfficialTexts, ddim_inversion, ddim_timesteps, official_rival
from PIL import Image

from rival_ext.a1111.model import schedule_of
from rival_ext.job import CHAINS
from rival_ext.noise import vp_scale
from rival_ext.params import AttentionMode, RivalParams
from rival_ext.webui import sampling

INDEPENDENT_RTOL = 1e-6  # float32 chain (see the docstring); measured <= 2e-7
LOOP_RTOL = 1e-12  # float64 DDIM loops; measured <= 1.2e-14
EULER_F32_SIGMA_RTOL = 1e-6  # float32 sampler sigmas; measured <= 1.2e-7
EULER_F64_SIGMA_RTOL = 1e-7  # float32 AdaIN sigma in on_cfg_after_cfg; measured <= 3e-8
CFG = 5.0


@dataclass(frozen=True)
class Case:
    reference_prompt: str  # "null" or "prompt"
    steps: int
    sampler: str  # "DDIM" (timesteps) or "Euler" (k-diffusion, schedule type DDIM)

    @property
    def config(self) -> OfficialConfig:
        # null: editing (one plain step); prompt: variation with AdaIN stopping before the switch to concat
        if self.reference_prompt == "null":
            return OfficialConfig(t_align=600, t_early=600, editing_early_steps=900, guidance_scale=CFG)
        return OfficialConfig(t_align=500, t_early=700, editing_early_steps=1000, guidance_scale=CFG)

    @property
    def rival(self) -> dict:
        c = self.config
        return enabled(init_latent="inverted", reference_prompt=self.reference_prompt, t_align=c.t_align,
                       t_early=c.t_early, early_plain=c.editing_early_steps)

    @property
    def calls(self) -> int:
        return self.steps - 1 if self.sampler == "DDIM" else self.steps


CASES = [Case(r, n, s) for s in ("DDIM", "Euler") for n in (10, 50) for r in ("null", "prompt")]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@dataclass
class Generation:
    final: torch.Tensor  # VP, float64
    inputs: list[tuple[float, torch.Tensor]]  # (t or sigma, VP generated latent) at each model call
    chain: object
    seconds: float


def generate(module, case: Case) -> Generation:
    """One txt2img through the stub with RIVAL; the generated latent at each cfg_denoiser callback."""
    from modules import processing, script_callbacks, scripts, shared

    shared.opts.data["rival_inversion_precision"] = "model"  # "fp32" would run a float64 UNet in float32
    CHAINS.clear()
    inputs = []

    def record(params):  # registered after RIVAL's callback; the uncond row is the sampler's own x
        inputs.append((float(params.sigma[-1]), params.x[-1:].detach().clone()))

    script_callbacks.on_cfg_denoiser(record)
    kind = {"sampler_name": "DDIM"} if case.sampler == "DDIM" else {"sampler_name": "Euler", "scheduler": "DDIM"}
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", negative_prompt="ugly", steps=case.steps,
                                                    width=64, height=64, seed=3, cfg_scale=CFG, **kind)
    attach(p, scripts.ScriptRunner([module.RivalScript()]), case.rival)
    samples = []
    sample = p.sample

    def keep(*args, **kwargs):
        samples.append(sample(*args, **kwargs))
        return samples[-1]

    p.sample = keep  # under RIVAL's wrapper
    start = time.perf_counter()
    processing.process_images(p)
    seconds = time.perf_counter() - start
    script_callbacks.remove_callbacks_for_function(record)
    chain = next(iter(CHAINS._items.values()))
    if case.sampler == "DDIM":
        vp = [(s, x.double()) for s, x in inputs]
        final = samples[0].double()
    else:
        vp = [(s, x.double() * float(vp_scale(s))) for s, x in inputs]
        final = samples[0].double() * float(vp_scale(float(chain.sigmas[-1])))
    return Generation(final, vp, chain, seconds)


class Official:
    """The official loop on the fake model's UNet and texts, for one case."""

    def __init__(self, model, case: Case) -> None:
        self.unet = model.model.diffusion_model
        self.abar = model.alphas_cumprod.double()

        def encode(text):
            return model.get_learned_conditioning([text])

        ref = encode("") if case.reference_prompt == "null" else encode("a cat")
        self.texts = OfficialTexts(ref, encode(""), encode("ugly"), ref, encode("a cat"))
        self.case = case

    def run(self, z0=None, chain=None, generated_init=None):
        trace = []
        out = official_rival(self.unet, self.abar, z0, self.case.steps, self.texts, self.case.config, chain=chain,
                             generated_init=generated_init, calls=self.case.calls, trace=trace)
        return out, trace


def vp_nodes(chain) -> list[torch.Tensor]:
    """The extension's chain as the official list (clean latent first), as the reference rows see it:
    the float32 node times vp_scale, rounded to float32 (``InversionChain.reference_vp``)."""
    n = chain.steps
    return [chain.reference_vp(float(chain.sigmas[n - j])).double()[None] for j in range(n + 1)]


@pytest.fixture(scope="module")
def env64():
    model, module = stub_environment(torch.float64)
    yield model, module
    fake_model.reset_a1111_state()
    fake_model.install()  # leave the float32 default for other modules


def phases(case: Case) -> set[str]:
    params = RivalParams(t_align=case.config.t_align, t_early=case.config.t_early,
                         early_plain=case.config.editing_early_steps)
    seen = set()
    for t in ddim_timesteps(case.steps)[: case.calls]:
        seen.add(params.attention_mode(t).value)
        seen.add("adain" if params.adain_active(t) else "after-adain")
    return seen


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.sampler}-{c.reference_prompt}-{c.steps}")
def test_a1111_generation_equals_the_official_loop(env64, case):
    model, module = env64
    gen = generate(module, case)
    official = Official(model, case)
    expected_phases = {AttentionMode.REFERENCE.value, AttentionMode.CONCAT.value, "adain", "after-adain"}
    assert expected_phases <= phases(case)
    assert len(gen.inputs) == case.calls

    # Independent: the official code inverts z0 (the extension's clean latent) itself.
    z0 = vp_nodes(gen.chain)[0]
    own_chain = ddim_inversion(official.unet, official.abar, z0, case.steps, official.texts.inversion)
    run, _ = official.run(z0=z0, chain=own_chain)
    chain_error = max(rel(a, b) for a, b in zip(vp_nodes(gen.chain), own_chain))
    independent = rel(gen.final, run.generated)

    # Loop: the official loop on the extension's chain and first model input.
    run, trace = official.run(chain=vp_nodes(gen.chain), generated_init=gen.inputs[0][1])
    final = rel(gen.final, run.generated)
    inputs = max(rel(x, o) for (_, x), o in zip(gen.inputs, trace))
    print(f"{case}: {gen.seconds:.1f}s independent {independent:.2g} chain {chain_error:.2g} "
          f"loop final {final:.2g} inputs {inputs:.2g}")

    assert chain_error < INDEPENDENT_RTOL
    assert independent < INDEPENDENT_RTOL
    tol = LOOP_RTOL if case.sampler == "DDIM" else EULER_F32_SIGMA_RTOL  # float32 sigmas: docstring
    assert final < tol and inputs < tol
    assert rel(gen.final, z0) > 0.05  # not vacuous: far from the reference


@pytest.mark.parametrize("steps", [10, 50])
def test_euler_with_float64_sigmas_equals_the_official_loop_to_round_off(env64, monkeypatch, steps):
    """Most of the Euler deviation above is the float32 sigma list: handed float64 sigmas (and float64 noise,
    so that k-diffusion's ``s_in`` is float64), Euler agrees to 3e-8; the rest is the float32 AdaIN sigma of
    ``on_cfg_after_cfg`` (see the module docstring)."""
    model, module = env64
    case = Case("prompt", steps, "Euler")
    swap = sampling.swap_attribute

    def float64_sigmas(obj, name, value):
        if name == "sampler_noise_scheduler_override":
            sigmas = schedule_of(model).sigmas
            exact = torch.cat([sigmas[torch.tensor(ddim_timesteps(steps))], sigmas[:1]])
            assert torch.allclose(value(steps).double(), exact, rtol=1e-6)

            def value(_steps):
                return exact
        return swap(obj, name, value)

    monkeypatch.setattr(sampling, "swap_attribute", float64_sigmas)
    from modules import rng

    next_noise = rng.ImageRNG.next
    monkeypatch.setattr(rng.ImageRNG, "next", lambda self: next_noise(self).double())
    gen = generate(module, case)
    run, trace = Official(model, case).run(chain=vp_nodes(gen.chain), generated_init=gen.inputs[0][1])
    final = rel(gen.final, run.generated)
    inputs = max(rel(x, o) for (_, x), o in zip(gen.inputs, trace))
    print(f"Euler float64 sigmas, {steps} steps: final {final:.2g} inputs {inputs:.2g}")
    assert final < EULER_F64_SIGMA_RTOL and inputs < EULER_F64_SIGMA_RTOL


# -- inpainting ------------------------------------------------------------------------------------------------------
#
# img2img's inpaint tab (whole picture, full strength, the left half regenerated), preset Inpainting (null reference
# prompt, t_align 600, t_early 600, no plain steps) against the official loop with its keep-region overwrite, for the
# two references: the init image itself (the official setting: one chain) and another image (the keep region follows
# the init image's chain, attention and AdaIN the reference's). A1111's img2img noises the start to the top level and
# then samples; its DDIM calls the model first one level lower (timestep index 1: ``first_call``) and ends at level
# t = 1, where the extension's ``post_sample`` puts the keep region on z0 as the official end does. Euler on the DDIM
# schedule covers the whole official loop. Euler's final latent is VE at sigma_min except the keep region, which is
# z0 itself (what A1111 decodes, as the official code decodes z0 there): only the regenerated region is converted.
#
# Independent: the official loop inverts both clean latents itself and starts from the official start, the chain's
# top with the regenerated region permuted (the permutation is the extension's seeded one, ``inpaint_initial_latent``,
# applied to the official top). Loop: the official loop on the extension's chains and first model input.
#
# Measured (10 steps, float64 fake model; whole final latent / regenerated region): independent <= 8.5e-8 / 1.1e-7
# (chains 1.1e-7); loop DDIM <= 2.7e-15 / 4.7e-15, Euler <= 3.8e-8 / 5e-8, model inputs 7e-8 (float32 sigmas, see
# above). The four cases take ~30 s.

INPAINT_CONFIG = OfficialConfig(t_align=600, t_early=600, editing_early_steps=1000, guidance_scale=CFG)


@dataclass(frozen=True)
class InpaintCase:
    reference: str  # "init image" (use the init image as reference) or "another" (an uploaded reference)
    sampler: str  # "DDIM" or "Euler" (schedule type DDIM)
    steps: int = 10

    @property
    def rival(self) -> dict:
        rival = {"enabled": True, "preset": "inpainting"}
        if self.reference == "init image":
            return {**rival, "use_init_image": True}
        return {**rival, "reference_image": reference_image()}

    @property
    def first_call(self) -> int:
        return 1 if self.sampler == "DDIM" else 0

    @property
    def calls(self) -> int:
        return self.steps - 1 if self.sampler == "DDIM" else self.steps


INPAINT_CASES = [InpaintCase(r, s) for s in ("DDIM", "Euler") for r in ("init image", "another")]


def inpaint_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # A1111: white = regenerate; the left half
    return mask


def init_image() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()).resize((64, 64))


class FinalLatent(scripts.Script):
    """Keeps the latent that leaves ``post_sample`` (after RIVAL's, which runs first), i.e. what A1111 decodes."""

    def title(self):
        return "final latent"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def post_sample(self, p, ps, *args):
        self.samples = ps.samples.clone()


@dataclass
class Inpainting:
    final: torch.Tensor  # VP, float64 (the keep region as sampled: z0)
    inputs: list[torch.Tensor]  # VP generated latent at each model call
    chain: object
    keep_chain: object
    regenerate: torch.Tensor  # (H, W) bool
    seed: int


def generate_inpainting(module, case: InpaintCase) -> Inpainting:
    """One img2img inpainting through the stub with RIVAL; the generated latent at each cfg_denoiser callback."""
    from modules import processing, script_callbacks, shared

    from rival_ext.webui import extension

    shared.opts.data["rival_inversion_precision"] = "model"
    CHAINS.clear()
    inputs, jobs = [], []

    def record(params):  # registered after RIVAL's callback: the keep region is forced already
        jobs.append(extension.job_of(params.denoiser.p))
        inputs.append((float(params.sigma[-1]), params.x[-1:].detach().clone()))

    script_callbacks.on_cfg_denoiser(record)
    kind = {"sampler_name": "DDIM"} if case.sampler == "DDIM" else {"sampler_name": "Euler", "scheduler": "DDIM"}
    p = processing.StableDiffusionProcessingImg2Img(
        prompt="a cat", negative_prompt="ugly", steps=case.steps, width=64, height=64, seed=3, cfg_scale=CFG,
        init_images=[init_image()], mask=inpaint_mask(), denoising_strength=1.0, inpaint_full_res=False,
        inpainting_fill=1, **kind)
    final = FinalLatent()
    attach(p, scripts.ScriptRunner([module.RivalScript(), final], is_img2img=True), case.rival)
    torch.manual_seed(0)  # A1111 encodes the init image with a posterior sample from the global RNG
    try:
        processing.process_images(p)
    finally:
        script_callbacks.remove_callbacks_for_function(record)
    job = jobs[0]
    regenerate = job.prepared.regenerate
    if case.sampler == "DDIM":
        vp = [x.double() for _, x in inputs]
        samples = final.samples.double()
    else:
        vp = [x.double() * float(vp_scale(s)) for s, x in inputs]
        scale = float(vp_scale(float(job.prepared.chain.sigmas[-1])))
        samples = torch.where(regenerate, final.samples.double() * scale, final.samples.double())
    return Inpainting(samples, vp, job.prepared.chain, job.prepared.keep_chain, regenerate, p.seeds[0])


@pytest.mark.parametrize("case", INPAINT_CASES, ids=lambda c: f"{c.sampler}-{c.reference}")
def test_a1111_inpainting_equals_the_official_loop(env64, case):
    """The final latent and the regenerated region equal the official loop's, for both references and samplers."""
    from rival_ext.latent_init import inpaint_initial_latent

    model, module = env64
    gen = generate_inpainting(module, case)
    official = Official(model, Case("null", case.steps, case.sampler))
    keep, regenerate = ~gen.regenerate, gen.regenerate
    assert (case.reference == "init image") == (gen.keep_chain is gen.chain)
    assert len(gen.inputs) == case.calls - case.first_call
    params = RivalParams(t_align=600, t_early=600, early_plain=1000)
    ts = ddim_timesteps(case.steps)[case.first_call : case.calls]
    assert {params.attention_mode(t) for t in ts} == {AttentionMode.REFERENCE, AttentionMode.CONCAT}
    assert 0 < sum(params.adain_active(t) for t in ts) < len(ts)

    def run(chain, keep_chain, start):
        trace = []
        out = official_rival(official.unet, official.abar, None, case.steps, official.texts, INPAINT_CONFIG,
                             generated_init=start, chain=chain, calls=case.calls, trace=trace, keep=keep,
                             keep_chain=keep_chain, first_call=case.first_call)
        return out.generated, trace

    def region(x):
        return x[..., regenerate]

    # Independent: both chains inverted by the official code; the official start on the init image's chain.
    ref_nodes, keep_nodes = vp_nodes(gen.chain), vp_nodes(gen.keep_chain)
    own = ddim_inversion(official.unet, official.abar, ref_nodes[0], case.steps, official.texts.inversion)
    own_keep = own if gen.keep_chain is gen.chain else ddim_inversion(
        official.unet, official.abar, keep_nodes[0], case.steps, official.texts.inversion)
    top = own_keep[case.steps]
    start = inpaint_initial_latent(top[0], regenerate, gen.seed)[None]
    start = torch.where(keep, own_keep[case.steps - case.first_call], start)
    final, _ = run(own, own_keep, start)
    chain_error = max(rel(a, b) for a, b in zip(ref_nodes + keep_nodes, own + own_keep))
    independent, independent_region = rel(gen.final, final), rel(region(gen.final), region(final))

    # Loop: the official loop on the extension's chains and first model input.
    final, trace = run(ref_nodes, keep_nodes, gen.inputs[0])
    loop, loop_region = rel(gen.final, final), rel(region(gen.final), region(final))
    inputs = max(rel(x, o) for x, o in zip(gen.inputs, trace))
    print(f"{case}: independent {independent:.2g} (region {independent_region:.2g}) chain {chain_error:.2g} "
          f"loop {loop:.2g} (region {loop_region:.2g}) inputs {inputs:.2g}")

    assert chain_error < INDEPENDENT_RTOL
    assert independent < INDEPENDENT_RTOL and independent_region < INDEPENDENT_RTOL
    tol = LOOP_RTOL if case.sampler == "DDIM" else EULER_F32_SIGMA_RTOL
    assert loop < tol and loop_region < tol and inputs < tol
    assert torch.equal(gen.final[..., keep], gen.keep_chain.origin_latent.double()[None][..., keep])  # z0 exactly
    assert rel(region(gen.final), region(keep_nodes[0])) > 0.05  # not vacuous: regenerated, far from the init image
