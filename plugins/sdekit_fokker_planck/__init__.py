"""Fokker–Planck diagnostics of scores and drifts, and a finite-volume Fokker–Planck solver."""
