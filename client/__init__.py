"""inpaint.client"""
