"""What the A1111 script's callbacks do, kept out of ``scripts/`` so it can be tested and read.

Each function takes A1111's objects as the callbacks receive them. The job for a generation is
an attribute of its ``p``; the only module state is the job whose model evaluation is open
between ``on_cfg_denoiser`` and ``on_cfg_after_cfg`` (A1111 runs one generation at a time under
its queue lock, and the after-CFG callback carries no reference to ``p``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..hooks import swap_attribute
from ..image import pixel_hash
from .args import FIELDS, RivalInputError, parse_args
from .infotext import generation_params
from .job import RivalJob
from .official import apply_official_settings
from .xyz import overrides_of

JOB_ATTRIBUTE = "rival_job"
_open: RivalJob | None = None


def job_of(p: object) -> RivalJob | None:
    """The RIVAL job attached to this generation, if any."""
    return getattr(p, JOB_ATTRIBUTE, None)


def start(p: object, args: Sequence[object], default_preset: str = "variation") -> None:
    """``process``: validate the panel, attach a job to ``p`` and make ``p.sample`` clean up.

    ``default_preset`` is the preset the panel starts with (the API pads a dict with its values).
    """
    finish(p)
    try:
        parsed = parse_args(with_overrides(args, overrides_of(p)), default_preset)
        if not parsed.enabled:
            return
        if parsed.reference_image is None and not parsed.use_init_image:
            raise RivalInputError("no reference image (reference_image): upload one in the RIVAL panel, or untick "
                                  "the box in the panel's header to turn RIVAL off (opening the panel ticks it)")
    except RivalInputError as error:
        _refuse(p, error)
        return
    except Exception as error:  # A1111 would swallow it and run without RIVAL: stop instead
        _refuse(p, RivalInputError(f"could not read the panel's values: {error}"))
        return
    if parsed.official_settings:
        apply_official_settings(p, parsed.preset)
    job = RivalJob(p, parsed)
    job.wrap_sample()
    setattr(p, JOB_ATTRIBUTE, job)
    reference = parsed.reference_image
    if parsed.use_init_image and getattr(p, "init_images", None):
        reference = p.init_images[0]
    image_hash = pixel_hash(reference) if reference is not None else "init image"
    p.extra_generation_params.update(generation_params(parsed, image_hash))


def with_overrides(args: Sequence[object], overrides: dict[str, object]) -> list[object]:
    """The script args with XYZ-plot values applied (as one dict of named values)."""
    if not overrides:
        return list(args)
    named = dict(args[0]) if args and isinstance(args[0], dict) else dict(zip(FIELDS, args))
    return [{**named, **overrides}]


def _refuse(p: object, error: RivalInputError) -> None:
    """Stop the generation with ``error``: raised from p.sample, where A1111 does not swallow it."""
    def sample(*_args: object, **_kwargs: object) -> object:
        restore()
        raise error

    restore = swap_attribute(p, "sample", sample)
    print(f"{error}")


def before_every_sampling(p: object, x: object, noise: object) -> None:
    """``process_before_every_sampling``: prepare the pass that is about to sample."""
    job = job_of(p)
    if job is not None:
        job.prepare_pass(p, x, noise)


def on_cfg_denoiser(params: object) -> None:
    """Global ``on_cfg_denoiser``: open the evaluation for the job of the denoiser's ``p``."""
    global _open
    job = job_of(getattr(params.denoiser, "p", None))
    if job is None or not job.active:
        _open = None
        return
    job.on_cfg_denoiser(params)
    _open = job if job.active else None


def on_cfg_after_cfg(params: object) -> None:
    """Global ``on_cfg_after_cfg``: finish the evaluation opened by ``on_cfg_denoiser``."""
    global _open
    job, _open = _open, None
    if job is not None:
        job.on_cfg_after_cfg(params)


def post_sample(p: object, samples: object) -> None:
    """``post_sample``: final inpainting overwrite, and the notes into the infotext."""
    job = job_of(p)
    if job is None:
        return
    job.post_sample(samples)
    if job.notes:
        p.extra_generation_params["RIVAL notes"] = "; ".join(job.notes)


def postprocess(p: object, processed: object) -> None:
    """Add the reconstruction preview to the gallery, then drop the job."""
    job = job_of(p)
    if job is not None and job.reconstructions and processed is not None:
        for image in job.reconstructions:
            processed.images.append(image)
            processed.infotexts.append("RIVAL: inversion reconstruction of the reference")
    finish(p)


def finish(p: object) -> None:
    """Remove whatever a job left (safety net beside the p.sample wrapper)."""
    global _open
    job = job_of(p)
    if job is not None:
        job.close()
        delattr(p, JOB_ATTRIBUTE)
    _open = None
