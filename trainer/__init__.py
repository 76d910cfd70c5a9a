"""inpaint.trainer"""
