"""Job/progress state (``shared.state``), with the fields and methods an extension touches."""

import time


# A1111: modules/shared_state.py State: textinfo is the progress text, sampling_step/sampling_steps the progress
# bar, interrupted/skipped are read by CFGDenoiser.forward and process_images_inner
class State:
    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    job_timestamp = '0'
    sampling_step = 0
    sampling_steps = 0
    current_latent = None
    current_image = None
    textinfo = None
    time_start = None

    # A1111: State.skip / interrupt / stop_generating just set the flags
    def skip(self) -> None:
        self.skipped = True

    def interrupt(self) -> None:
        self.interrupted = True

    def stop_generating(self) -> None:
        self.stopping_generation = True

    # A1111: State.nextjob: job_no += 1, sampling_step = 0
    def nextjob(self) -> None:
        self.job_no += 1
        self.sampling_step = 0

    # A1111: State.begin resets the flags and textinfo
    def begin(self, job: str = "(unknown)") -> None:
        self.sampling_step = 0
        self.time_start = time.time()
        self.job_count = -1
        self.job_no = 0
        self.current_latent = None
        self.current_image = None
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job

    def end(self) -> None:
        self.job = ""
        self.job_count = 0

    def dict(self) -> dict:
        names = ("skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no",
                 "sampling_step", "sampling_steps")
        return {k: getattr(self, k) for k in names}
