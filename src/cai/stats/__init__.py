"""Pure statistics, each figure with its denominator and interval: rates and Wilson intervals (`rates`),
Bradley-Terry / Elo with bootstrap intervals (`elo`), calibration of soft labels (`calibration`).

Numbers in, numbers out: must not import any other part of cai but `cai.core`.
"""
