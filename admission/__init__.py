"""Admission controls between claim and call; see `admission.base`."""
