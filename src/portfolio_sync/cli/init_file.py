"""The commented configuration file written by `portfolio-sync init`."""

from __future__ import annotations

TEMPLATE = """\
# portfolio-sync configuration. Every setting can also come from the environment
# (PORTFOLIO_SYNC_<NAME>, e.g. PORTFOLIO_SYNC_DATABASE_URL) or a CLI flag; flags win over
# the environment, which wins over this file.

# Where the portfolio table lives: sqlite:///file.db, or postgresql://user:pass@host:5432/db
# (postgres:// URLs from Supabase and other hosts work as printed).
database_url = "sqlite:///portfolio-sync.db"

# Where the images live: a folder path, file:///abs/path, or s3://bucket[/prefix].
storage_url = "storage"
# For S3-compatible stores other than AWS (MinIO, Supabase Storage, R2):
# s3_endpoint = "https://<project>.supabase.co/storage/v1/s3"
# Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION.

# The table, its key column and the column holding the image list
# (text[], jsonb or json on PostgreSQL; JSON text on SQLite).
table = "portfolios"
key_column = "id"
images_column = "images"

# Folder of a portfolio, relative to the storage root; {key} is the key column's value.
folder = "{key}/"

# Several image columns per row, each filled from its own sub-folder
# (replaces images_column/folder when set):
# [collections]
# before_images = "{key}/before_images/"
# after_images = "{key}/after_images/"

# Store public URLs instead of storage paths ({path} is URL-encoded):
# public_url = "https://cdn.example.com/{path}"

# Order of the list: "name" (natural: img2 before img10), "uploaded" (oldest first),
# or "preserve" (keep the row's order, append new images by name).
order = "name"

# Which files are images (case-insensitive) and whether sub-folders count.
# extensions = ["jpg", "jpeg", "png", "webp", "gif", "avif", "heic", "heif",
#               "tif", "tiff", "bmp", "svg"]
recursive = false

# Store each image as a JSON object (jsonb/json/JSON text columns) with these fields;
# fields your editors add (alt, caption, …) are kept. Empty: plain strings.
# image_fields = ["path", "url", "width", "height", "bytes", "etag", "uploaded", "type",
#                 "placeholder"]

# Full pass schedule (cron) for the service.
schedule = "*/15 * * * *"

# A bulk pass that would empty more than this share of non-empty rows (and at least
# max_empty_rows rows) is refused unless --force is given.
max_empty_share = 0.1
max_empty_rows = 5
"""
