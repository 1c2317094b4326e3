"""The peer comparison's parts: venvs (envs), driver scripts (drive_*), the protocol they share
(driver_protocol), the orchestrator's view of a driver (process) and the markdown (markdown).
The driver scripts run inside the peers' venvs and import only ``driver_protocol`` from here."""
