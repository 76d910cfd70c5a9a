"""inpaint.serving"""
