"""Vendor adapters. One small interface per kind (``<kind>/base.py``), one module per vendor."""
