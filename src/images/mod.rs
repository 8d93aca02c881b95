//! Images: unpacking OCI layers into read-only snapshots, safely.
