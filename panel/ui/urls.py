from django.urls import path

from panel.ui.views import admin, auth, keys, nodes, servers

app_name = "ui"

urlpatterns = [
    path("", auth.home, name="home"),
    path("login/", auth.login, name="login"),
    path("login/code/", auth.otp, name="otp"),
    path("logout/", auth.logout, name="logout"),
    path("language/", auth.language, name="language"),
    path("account/security/", auth.security, name="security"),
    # Customers' pages (admins see every customer's objects through the same views).
    path("servers/", servers.server_list, name="servers"),
    path("servers/<int:server_id>/", servers.server_detail, name="server"),
    path("servers/<int:server_id>/actions/<slug:action>/", servers.server_action, name="server-action"),
    path("operations/<int:operation_id>/", servers.operation_detail, name="operation"),
    path("api-keys/", keys.my_keys, name="keys"),
    path("api-keys/<int:key_id>/revoke/", keys.revoke_key, name="key-revoke"),
    # The provider admin area: 404 for anyone else.
    path("admin/", admin.dashboard, name="admin-dashboard"),
    path("admin/customers/", admin.customer_list, name="admin-customers"),
    path("admin/customers/new/", admin.customer_create, name="admin-customer-create"),
    path("admin/customers/<int:customer_id>/", admin.customer_detail, name="admin-customer"),
    path("admin/customers/<int:customer_id>/edit/", admin.customer_edit, name="admin-customer-edit"),
    path("admin/users/", admin.user_list, name="admin-users"),
    path("admin/users/new/", admin.user_create, name="admin-user-create"),
    path("admin/plans/", admin.plan_list, name="admin-plans"),
    path("admin/plans/new/", admin.plan_create, name="admin-plan-create"),
    path("admin/plans/<int:plan_id>/edit/", admin.plan_edit, name="admin-plan-edit"),
    path("admin/nodes/", nodes.node_list, name="admin-nodes"),
    path("admin/nodes/new/", nodes.node_create, name="admin-node-create"),
    path("admin/nodes/<int:node_id>/", nodes.node_detail, name="admin-node"),
    path("admin/nodes/<int:node_id>/install/", nodes.node_install, name="admin-node-install"),
    path("admin/nodes/<int:node_id>/maintenance/", nodes.node_maintenance, name="admin-node-maintenance"),
    path("admin/nodes/<int:node_id>/remove/", nodes.node_remove, name="admin-node-remove"),
    path("admin/nodes/<int:node_id>/accept-host-key/", nodes.node_accept_host_key, name="admin-node-accept-key"),
    path("admin/clusters/", nodes.cluster_list, name="admin-clusters"),
    path("admin/clusters/new/", nodes.cluster_create, name="admin-cluster-create"),
    path("admin/clusters/<int:cluster_id>/", nodes.cluster_detail, name="admin-cluster"),
    path("admin/clusters/<int:cluster_id>/edit/", nodes.cluster_edit, name="admin-cluster-edit"),
    path("admin/clusters/<int:cluster_id>/delete/", nodes.cluster_delete, name="admin-cluster-delete"),
    path("admin/clusters/<int:cluster_id>/storages/new/", nodes.storage_create, name="admin-storage-create"),
    path("admin/storages/<int:storage_id>/edit/", nodes.storage_edit, name="admin-storage-edit"),
    path("admin/storages/<int:storage_id>/delete/", nodes.storage_delete, name="admin-storage-delete"),
    path("admin/servers/", admin.server_list, name="admin-servers"),
    path("admin/servers/new/", admin.server_create, name="admin-server-create"),
    path("admin/operations/", admin.operation_list, name="admin-operations"),
    path("admin/audit/", admin.audit_log, name="admin-audit"),
    path("admin/api-keys/", keys.admin_keys, name="admin-keys"),
    path("admin/api-keys/new/", keys.admin_key_create, name="admin-key-create"),
]
