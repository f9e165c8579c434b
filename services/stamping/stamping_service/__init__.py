"""Stamping service: PDF stamping, signing and verification."""
