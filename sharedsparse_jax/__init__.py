"""SharePrefill: estimation, pivot selection and pattern sharing for sparse prefill."""
