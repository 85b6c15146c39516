{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "strata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "strata.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "strata.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "strata.operatorName" -}}
{{- printf "%s-operator" (include "strata.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "strata.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "strata.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The EventBroker's name; the operator derives <name>-broker, <name>-bootstrap, ... from it. */}}
{{- define "strata.brokerName" -}}
{{- default (include "strata.fullname" .) .Values.eventBroker.name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "strata.bootstrap" -}}
{{- printf "%s-bootstrap.%s.svc:%v" (include "strata.brokerName" .) .Release.Namespace (index .Values.eventBroker.listeners 0).port -}}
{{- end -}}

{{/* The Secret holding the operator's Kafka admin password. */}}
{{- define "strata.kafkaAdminSecret" -}}
{{- default (printf "%s-kafka-admin" (include "strata.fullname" .)) .Values.operator.kafka.existingSecret -}}
{{- end -}}

{{/* Whether the chart's broker authenticates clients on its first listener. */}}
{{- define "strata.brokerAuthenticates" -}}
{{- if eq ((index .Values.eventBroker.listeners 0).authentication | default "none") "scram-sha-512" }}true{{ end -}}
{{- end -}}

{{/* Namespaces the operator watches; empty list = all (cluster scope only). */}}
{{- define "strata.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces -}}
{{- toJson .Values.operator.watchNamespaces -}}
{{- else if eq .Values.rbac.scope "namespace" -}}
{{- toJson (list .Release.Namespace) -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/* Labels -------------------------------------------------------------------------------- */}}

{{- define "strata.labels" -}}
helm.sh/chart: {{ include "strata.chart" . }}
{{ include "strata.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: strata
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Images ------------------------------------------------------------------------------- */}}

{{- define "strata.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Restricted Pod Security Standard ---------------------------------------------------- */}}

{{- define "strata.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "strata.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A broker/topic property value as a string: 268435456, never 2.68435456e+08. */}}
{{- define "strata.propValue" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . | toString -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}
