"""Policies as code: typed models and loader for `policies/*.yaml`, the processing register and the preview."""
