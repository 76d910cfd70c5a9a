"""inpaint.export"""
