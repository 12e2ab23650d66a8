"""Exports of a version: training shards of the kept samples, SQL over a version, reports."""
