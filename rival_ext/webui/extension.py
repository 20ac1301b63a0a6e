"""What the script's callbacks do, in every WebUI of the A1111 family, kept out of ``scripts/``.

Each function takes the WebUI's objects as the callbacks receive them. The job for a generation is
an attribute of its ``p``; the only module state is the job whose model evaluation is open
between ``on_cfg_denoiser`` and ``on_cfg_after_cfg`` (the WebUI runs one generation at a time under
its queue lock, and the after-CFG callback carries no reference to ``p``). The model is reached
through the host adapter of the running WebUI (``hosts.host_for``).

``p.sample`` is wrapped so that RIVAL's mechanism is removed in its ``finally`` (the WebUI skips
``postprocess`` when sampling raises) and so that an error raised in a callback, which the WebUI
would swallow and carry on without RIVAL, stops the generation with its message instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from ..conditioning import Role
from ..hooks import swap_attribute
from ..image import pixel_hash
from ..job import RivalJob
from ..request import RivalInputError, RivalRuntimeError
from . import settings
from .args import parse_args
from .fields import FIELDS
from .hosts import host_for
from .infotext import generation_params
from .objects import AfterCFGCallbackParams, CFGDenoiserParams, Processed, Processing
from .official import apply_official_settings
from .progress import WebUIProgress
from .sampling import pass_request
from .xyz import overrides_of

JOB_ATTRIBUTE = "rival_job"
_open: RivalJob | None = None


class RivalAbort(BaseException):
    """Carries an error out of a script callback, which the WebUI would swallow, to the p.sample wrapper."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Generation:
    """The job of one generation and the ``p.sample`` wrapper that ends each of its batches cleanly."""

    def __init__(self, p: Processing, job: RivalJob) -> None:
        self.p = p
        self.job = job
        self._restore_sample: Callable[[], None] | None = None

    def wrap_sample(self) -> None:
        """Make ``p.sample`` take RIVAL off the model when it returns, raises or is interrupted.

        ``p.sample`` runs once per batch (batch count), so after a batch the wrapper stays until
        ``close`` (postprocess), which puts back exactly what was there (another extension's wrapper
        included). An error ends the generation: then it is put back at once.
        """
        original = self.p.sample

        def sample(*args: object, **kwargs: object) -> object:
            finished = False
            try:
                result = original(*args, **kwargs)
                finished = True
                return result
            except RivalAbort as abort:
                raise abort.error from None
            finally:
                if finished:
                    self.job.uninstall()
                else:
                    self.close()

        self._restore_sample = swap_attribute(self.p, "sample", sample)

    def close(self) -> None:
        """Take RIVAL off and give ``p.sample`` back (idempotent)."""
        self.job.uninstall()
        if self._restore_sample is not None:
            self._restore_sample()
        self._restore_sample = None


def generation_of(p: object) -> Generation | None:
    """The RIVAL generation attached to this ``p``, if any."""
    return getattr(p, JOB_ATTRIBUTE, None)


def job_of(p: object) -> RivalJob | None:
    """The RIVAL job of this ``p``, if any."""
    generation = generation_of(p)
    return None if generation is None else generation.job


def start(p: Processing, args: Sequence[object], default_preset: str = "variation") -> None:
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
    except Exception as error:  # the WebUI would swallow it and run without RIVAL: stop instead
        _refuse(p, RivalInputError(f"could not read the panel's values: {error}"))
        return
    if parsed.official_settings:
        apply_official_settings(p, parsed.preset)
    generation = Generation(p, RivalJob(parsed, settings.current(), WebUIProgress()))
    generation.wrap_sample()
    setattr(p, JOB_ATTRIBUTE, generation)
    reference = parsed.reference_image
    init_images = getattr(p, "init_images", None) if parsed.use_init_image else None  # img2img's
    if init_images:
        reference = init_images[0]
    image_hash = pixel_hash(reference) if reference is not None else "init image"
    p.extra_generation_params.update(generation_params(parsed, image_hash))


def with_overrides(args: Sequence[object], overrides: dict[str, object]) -> list[object]:
    """The script args with X/Y/Z-plot values applied (as one dict of named values)."""
    if not overrides:
        return list(args)
    named = dict(args[0]) if args and isinstance(args[0], dict) else dict(zip(FIELDS, args))
    return [{**named, **overrides}]


def _refuse(p: object, error: RivalInputError) -> None:
    """Stop the generation with ``error``: raised from p.sample, where the WebUI does not swallow it."""
    def sample(*_args: object, **_kwargs: object) -> object:
        restore()
        raise error

    restore = swap_attribute(p, "sample", sample)
    print(f"{error}")


def before_every_sampling(p: Processing, x: Tensor, noise: Tensor) -> None:
    """``process_before_every_sampling``: prepare the pass that is about to sample."""
    job = job_of(p)
    if job is None:
        return
    from modules import shared

    host = host_for(getattr(p, "sd_model", None) or shared.sd_model)
    try:
        job.prepare_pass(p, host, pass_request(p, x, noise), x, noise)
    except (RivalInputError, RivalRuntimeError) as error:
        raise RivalAbort(error) from None


def on_cfg_denoiser(params: CFGDenoiserParams) -> None:
    """Global ``on_cfg_denoiser``: open the evaluation for the job of the denoiser's ``p``."""
    global _open
    _open = None
    job = job_of(getattr(params.denoiser, "p", None))
    if job is None or not job.active:
        return
    from modules import shared

    prepared, _ = job.installed_pass()
    if shared.sd_model is not prepared.host.model:
        job.stop("stopped at the refiner switch")
        return
    n_cond, n_uncond = params.text_cond.shape[0], params.text_uncond.shape[0]
    roles = [Role.COND] * n_cond + [Role.UNCOND] * n_uncond
    images = slice(-n_uncond, None) if prepared.host.stacked_cfg_rows else slice(None)
    level = float(params.sigma.reshape(-1)[0])
    x = job.open_evaluation(level, params.x, roles, images)
    if x is not params.x:  # in place: reForge and Forge Classic hand the model their own x, not params.x
        params.x.copy_(x)
    if prepared.regenerate is not None:
        params.denoiser.mask = None  # the WebUI's own blend would pull the keep region off the chain
    _open = job


def on_cfg_after_cfg(params: AfterCFGCallbackParams) -> None:
    """Global ``on_cfg_after_cfg``: finish the evaluation opened by ``on_cfg_denoiser`` (AdaIN)."""
    global _open
    job, _open = _open, None
    if job is None:
        return
    try:
        params.x = job.after_guidance(params.x)
    except RivalRuntimeError as error:
        job.uninstall()
        raise RivalAbort(error) from None


def post_sample(p: Processing, samples: object) -> None:
    """``post_sample``: final inpainting overwrite, and the notes into the infotext."""
    job = job_of(p)
    if job is None:
        return
    job.finish_samples(samples)
    if job.notes:
        p.extra_generation_params["RIVAL notes"] = "; ".join(job.notes)


def postprocess(p: Processing, processed: Processed | None) -> None:
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
    generation = generation_of(p)
    if generation is not None:
        generation.close()
        delattr(p, JOB_ATTRIBUTE)
    _open = None
