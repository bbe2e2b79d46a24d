from django.db import migrations, models
import django.db.models.deletion


def prefix_sha256(apps, schema_editor):
    Backup = apps.get_model("backup", "Backup")
    for backup in Backup.objects.exclude(checksum="").exclude(checksum__contains=":"):
        backup.checksum = f"sha256:{backup.checksum}"
        backup.save(update_fields=["checksum"])


def strip_sha256(apps, schema_editor):
    Backup = apps.get_model("backup", "Backup")
    for backup in Backup.objects.filter(checksum__startswith="sha256:"):
        backup.checksum = backup.checksum.removeprefix("sha256:")
        backup.save(update_fields=["checksum"])


class Migration(migrations.Migration):
    dependencies = [
        ("backup", "0001_initial"),
        ("nodes", "0003_network"),
    ]

    operations = [
        migrations.RenameField("backup", "sha256", "checksum"),
        migrations.AlterField("backup", "checksum", models.CharField(blank=True, max_length=80)),
        migrations.RunPython(prefix_sha256, strip_sha256),
        migrations.AddField("backup", "node", models.ForeignKey(
            blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="nodes.node")),
        migrations.AddField("backuptarget", "host_key", models.TextField(blank=True)),
        migrations.AlterField("backuptarget", "kind", models.CharField(
            choices=[("dir", "Folder on the panel's host"), ("node", "Folder on the server's node"),
                     ("sftp", "Backup host over SSH (SFTP)"), ("ftp", "FTP"), ("ftps", "FTP over TLS (explicit FTPS)")],
            default="dir", max_length=8)),
    ]
