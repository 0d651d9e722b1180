"""Meters wired into every trial (see docs in each module).

Interface used by bench.trial (the meters helper owns the implementation):

    meters = TrialMeters(device, config)   # torch.device, TrialConfig
    meters.start()          # trial start: reset peaks, baselines, start samplers
    meters.window_start()   # after warm-up, device synchronised: measured window opens
    meters.window_end()     # end of training, device synchronised
    meters.stop()           # stop samplers (idempotent; also called on OOM / errors)
    meters.fields() -> dict # trial-row columns (null where not applicable) + "notes" list
"""

from __future__ import annotations


class TrialMeters:  # placeholder until the meters land; records nothing, claims nothing
    def __init__(self, device, config) -> None:
        self.device = device

    def start(self) -> None: ...

    def window_start(self) -> None: ...

    def window_end(self) -> None: ...

    def stop(self) -> None: ...

    def fields(self) -> dict:
        return {"notes": ["meters not wired yet"]}
