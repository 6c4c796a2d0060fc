//! Nothing here: the end-to-end scenarios are in `tests/`, one file per
//! area (hosts, sync, bridge, edge, openclaw), sharing `tests/common`.
