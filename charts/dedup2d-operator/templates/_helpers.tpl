{{/* Names, labels and shared snippets of the chart. */}}

{{/* The base name: fullnameOverride, else the release name when it already says dedup2d, else <release>-dedup2d. */}}
{{- define "dedup2d.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains "dedup2d" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-dedup2d" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dedup2d.operatorName" -}}
{{- printf "%s-operator" (include "dedup2d.fullname" .) -}}
{{- end -}}

{{/* The namespace the operator reconciles (rbac.scope=Namespace). */}}
{{- define "dedup2d.watchNamespace" -}}
{{- .Values.watchNamespace | default .Release.Namespace -}}
{{- end -}}

{{- define "dedup2d.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (include "dedup2d.operatorName" .) -}}
{{- end -}}

{{- define "dedup2d.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component (operator, worker, api): pass (dict "ctx" . "component" "x"). */}}
{{- define "dedup2d.selectorLabels" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* repository@digest when a digest is given, else repository:tag (tag default: appVersion). */}}
{{- define "dedup2d.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "dedup2d.fleetImage" -}}
{{- .Values.fleet.image | default (include "dedup2d.image" .) -}}
{{- end -}}

{{/* Pod security context of every pod: the image's non-root user, RuntimeDefault seccomp. */}}
{{- define "dedup2d.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context of every container: read-only root, no privilege, no capabilities. */}}
{{- define "dedup2d.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* nodeSelector, tolerations and affinity of every pod. */}}
{{- define "dedup2d.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The operator's RBAC rules on its resources (examples/operator-role.yaml without the Lease rule). */}}
{{- define "dedup2d.operatorRules" -}}
# The rollouts it reconciles, and their status; patch: its dedup2d.io/cleanup finalizer.
- apiGroups: ["dedup2d.io"]
  resources: ["dedup2drollouts"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["dedup2d.io"]
  resources: ["dedup2drollouts/status"]
  verbs: ["get", "update", "patch"]
# Targets: worker and API images, the API's restart annotation, the dedup2d.io/originals
# annotation (server-side apply).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "patch"]
# Pods are only read (which image runs, who is Ready, who still terminates).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# The API's ConfigMap: the two payload keys, and the Redis URL the drain scans.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "patch"]
# Only when spec.drain.redis.urlSecretRef names a Secret.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events for transitions, requests and holds; listed after a restart to re-publish lost ones.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
{{- end -}}

{{/* Leader election, in the release namespace where the Lease lives. */}}
{{- define "dedup2d.leaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
{{- end -}}

