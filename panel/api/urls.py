from django.urls import path
from rest_framework.routers import DefaultRouter

from backup.api import BackupPlanViewSet, BackupTargetViewSet, BackupViewSet, PanelBackupViewSet, ServerBackupViewSet
from panel.alerts.api import AlertViewSet, RuleViewSet
from panel.api import views
from panel.api.clones import GoldenTemplateViewSet, ServerCloneViewSet
from panel.api.disks import ServerDiskViewSet
from panel.api.ovf import OvaViewSet, ServerOvaViewSet
from panel.api.snapshots import ServerSnapshotViewSet
from panel.images.api import IsoViewSet, ServerMediaViewSet
from panel.metrics import api as metrics
from panel.usage.api import ServerUsageView
from panel.webhooks.api import WebhookViewSet

router = DefaultRouter(trailing_slash=True)
router.register("customers", views.CustomerViewSet)
router.register("plans", views.PlanViewSet)
router.register("servers", views.ServerViewSet)
router.register("os-templates", views.OsTemplateViewSet)
router.register("recipes", views.RecipeViewSet)
router.register("operations", views.OperationViewSet)
router.register("api-keys", views.ApiKeyViewSet)
router.register("users", views.UserViewSet)
router.register("audit-log", views.AuditLogViewSet)
router.register("nodes", views.NodeViewSet)
router.register("clusters", views.ClusterViewSet)
router.register("storages", views.StorageViewSet)
router.register("networks", views.NetworkViewSet)
router.register("ip-pools", views.IpPoolViewSet)
router.register("ip-addresses", views.IpAddressViewSet)
router.register("webhooks", WebhookViewSet)
router.register("alerts", AlertViewSet)
router.register("alert-rules", RuleViewSet)
# /servers/{id}/backup/, restore/, backups/: detail actions only, beside ServerViewSet's.
router.register("servers", ServerBackupViewSet, basename="server-backup")
# /servers/{id}/disks/: the data disks (panel/api/disks.py).
router.register("servers", ServerDiskViewSet, basename="server-disks")
router.register("backup-targets", BackupTargetViewSet)
router.register("backup-plans", BackupPlanViewSet)
router.register("backups", BackupViewSet)
router.register("panel-backup", PanelBackupViewSet, basename="panel-backup")
# /servers/{id}/snapshots/ (panel/images/snapshot_actions.py).
router.register("servers", ServerSnapshotViewSet, basename="server-snapshot")
# /servers/{id}/clone/, make-template/ and the golden templates (panel/images/cloning.py).
router.register("servers", ServerCloneViewSet, basename="server-clone")
router.register("golden-templates", GoldenTemplateViewSet)
router.register("isos", IsoViewSet)
# /servers/{id}/attach-iso/, detach-iso/, rescue/, unrescue/: the boot media (panel/images/isos.py).
router.register("servers", ServerMediaViewSet, basename="server-media")
# /servers/{id}/export-ova/, /ova/import/, /ova/{operation}/download/ (panel/images/ovf_jobs.py).
router.register("servers", ServerOvaViewSet, basename="server-ova")
router.register("ova", OvaViewSet, basename="ova")

urlpatterns = [
    path("servers/<int:pk>/usage/", ServerUsageView.as_view(), name="server-usage"),
    # Monitoring (panel/metrics/api.py); any id segment reaches the view: a bad one is the JSON 404.
    path("servers/<str:pk>/metrics/", metrics.ServerMetricsView.as_view(), name="server-metrics"),
    path("nodes/<str:pk>/metrics/", metrics.NodeMetricsView.as_view(), name="node-metrics"),
    path("storages/<str:pk>/metrics/", metrics.StorageMetricsView.as_view(), name="storage-metrics"),
    path("networks/<str:pk>/metrics/", metrics.NetworkMetricsView.as_view(), name="network-metrics"),
    path("ip-pools/<str:pk>/metrics/", metrics.PoolMetricsView.as_view(), name="pool-metrics"),
    path("metrics/top/", metrics.MetricsTopView.as_view(), name="metrics-top"),
    *router.urls,
]
