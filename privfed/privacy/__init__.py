"""Record-level DP-SGD: the privacy ledger, accounting from it, noise calibration and the Opacus-backed trainer."""
