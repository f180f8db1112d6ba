"""Avatars in an S3-compatible bucket (django-storages + boto3), played on loopback by moto's server.

The settings are those project/settings.py derives from AWS_STORAGE_BUCKET_NAME
and friends (test_avatars.py checks that derivation in a fresh process).
"""

import io
import json
import urllib.error
import urllib.request

import boto3
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from moto.server import ThreadedMotoServer
from PIL import Image

from accounts import avatars, images
from accounts.models import User
from accounts.tasks import make_thumbnails
from tasks.models import TaskRecord
from tests.avatar_images import camera_jpeg, encode, quadrants
from tests.servers import free_port

pytestmark = pytest.mark.django_db

BUCKET = "parley-media"


@pytest.fixture
def bucket(settings):
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=endpoint, **credentials)
    s3.create_bucket(Bucket=BUCKET)
    # What README asks of a production bucket: thumbnails public, originals not.
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/avatars/*",
    }]}))  # fmt: skip
    settings.AWS_STORAGE_BUCKET_NAME = BUCKET
    settings.AWS_S3_ENDPOINT_URL = endpoint
    settings.AWS_S3_REGION_NAME = "us-east-1"
    settings.AWS_ACCESS_KEY_ID, settings.AWS_SECRET_ACCESS_KEY = "test", "test"
    settings.AWS_QUERYSTRING_AUTH = False
    settings.AWS_DEFAULT_ACL = None
    settings.AWS_S3_OBJECT_PARAMETERS = {"CacheControl": "public, max-age=31536000, immutable"}
    # Last: changing STORAGES makes Django build default_storage again, with the above.
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "storages.backends.s3.S3Storage"}}
    yield s3, endpoint
    server.stop()


def keys(s3, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_avatars_live_in_the_bucket_with_a_year_of_cache(bucket):
    s3, endpoint = bucket
    user = User.objects.create_user("ada")
    client = Client()
    client.force_login(user)

    first = camera_jpeg(6, 800, 600)
    assert client.post("/me/", {"display_name": "", "avatar": SimpleUploadedFile("a.jpg", first)}).status_code == 302
    digest = avatars.content_digest(first)
    assert keys(s3, "avatar-originals/") == [f"avatar-originals/{user.pk}/{digest}.jpg"]
    for _ in range(2):  # the task, then a rerun: still one set
        make_thumbnails.func(*TaskRecord.objects.latest("enqueued_at").args)
        assert keys(s3, "avatars/") == sorted(f"avatars/{user.pk}/{digest}-{o}" for o in images.OUTPUTS)
    head = s3.head_object(Bucket=BUCKET, Key=f"avatars/{user.pk}/{digest}-64.webp")
    assert head["CacheControl"] == "public, max-age=31536000, immutable"
    assert head["ContentType"] == "image/webp"

    user.refresh_from_db()
    url = avatars.avatar_urls(user)["64"]
    assert url == f"{endpoint}/{BUCKET}/avatars/{user.pk}/{digest}-64.webp"  # plain, permanent: no signature
    with urllib.request.urlopen(url, timeout=10) as response:  # anonymous, as a browser asks
        assert Image.open(io.BytesIO(response.read())).size == (64, 64)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{endpoint}/{BUCKET}/avatar-originals/{user.pk}/{digest}.jpg", timeout=10)
    assert refused.value.code == 403

    second = encode(quadrants(300, 300), "PNG")
    client.post("/me/", {"display_name": "", "avatar": SimpleUploadedFile("b.png", second)})
    make_thumbnails.func(*TaskRecord.objects.latest("enqueued_at").args)
    new = avatars.content_digest(second)
    assert keys(s3, "avatars/") == sorted(f"avatars/{user.pk}/{new}-{o}" for o in images.OUTPUTS)
    assert keys(s3, "avatar-originals/") == [f"avatar-originals/{user.pk}/{new}.png"]
