"""The shared vocabulary: value types, the error hierarchy, options written once, plugin loading.

Everything else in cai may import this; it imports nothing else of cai (only `cai.core` itself).
"""
