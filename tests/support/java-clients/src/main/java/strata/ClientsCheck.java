package strata;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Kafka's Java clients against one broker: AdminClient (create, create again, describe, describe an
 * unknown topic, list, cluster), an idempotent acks=all producer, a consumer in a group (subscribe,
 * poll, commitSync, committed) and the group's offsets through the AdminClient.
 *
 * <p>Usage: {@code ClientsCheck <bootstrap> <topic> <group> [<group.protocol>]}. Prints one {@code RESULT key=value}
 * line per observation (values that do not depend on which broker answered), exits 0 when every step
 * ran, 1 otherwise.
 */
public final class ClientsCheck {
    private static final int PARTITIONS = 3;
    private static final int RECORDS = 30;
    private static final Map<String, String> RESULTS = new TreeMap<>();

    private ClientsCheck() {
    }

    private static void result(String key, Object value) {
        RESULTS.put(key, String.valueOf(value));
    }

    private static String errorName(ExecutionException e) {
        return e.getCause() == null ? e.toString() : e.getCause().getClass().getSimpleName();
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        String group = args[2];
        Properties common = new Properties();
        common.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        common.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, 30_000);

        try (Admin admin = Admin.create(common)) {
            admin.createTopics(List.of(new NewTopic(topic, PARTITIONS, (short) 1))).all().get(60, TimeUnit.SECONDS);
            result("create", "ok");
            try {
                admin.createTopics(List.of(new NewTopic(topic, PARTITIONS, (short) 1))).all().get(60, TimeUnit.SECONDS);
                result("create again", "ok");
            } catch (ExecutionException e) {
                result("create again", errorName(e));
            }
            TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get(60, TimeUnit.SECONDS).get(topic);
            result("describe partitions", d.partitions().size());
            result("describe replicas", d.partitions().stream().mapToInt(p -> p.replicas().size()).sum());
            result("describe internal", d.isInternal());
            try {
                admin.describeTopics(List.of(topic + "-none")).allTopicNames().get(60, TimeUnit.SECONDS);
                result("describe unknown", "ok");
            } catch (ExecutionException e) {
                result("describe unknown", errorName(e));
            }
            Set<String> names = admin.listTopics().names().get(60, TimeUnit.SECONDS);
            result("listed", names.contains(topic));
            result("cluster nodes", admin.describeCluster().nodes().get(60, TimeUnit.SECONDS).size());
        }

        Properties pp = new Properties();
        pp.putAll(common);
        pp.put(ProducerConfig.ACKS_CONFIG, "all");
        pp.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        int[] perPartition = new int[PARTITIONS];
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(pp)) {
            List<java.util.concurrent.Future<RecordMetadata>> sent = new ArrayList<>();
            for (int i = 0; i < RECORDS; i++) {
                sent.add(producer.send(new ProducerRecord<>(topic, i % PARTITIONS, "k" + i, "v" + i)));
            }
            for (java.util.concurrent.Future<RecordMetadata> f : sent) {
                RecordMetadata m = f.get(60, TimeUnit.SECONDS);
                perPartition[m.partition()]++;
            }
        }
        result("produced per partition", java.util.Arrays.toString(perPartition));

        Properties cp = new Properties();
        cp.putAll(common);
        cp.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        if (args.length > 3) {
            cp.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, args[3]);  // "consumer": KIP-848
        }
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        List<String> values = new ArrayList<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(cp)) {
            consumer.subscribe(List.of(topic));
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (values.size() < RECORDS && System.nanoTime() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    values.add(r.value());
                }
            }
            consumer.commitSync(Duration.ofSeconds(30));
            Set<TopicPartition> parts = consumer.assignment();
            result("consumer assignment", parts.size());
            long committed = 0;
            for (OffsetAndMetadata o : consumer.committed(parts, Duration.ofSeconds(30)).values()) {
                committed += o == null ? 0 : o.offset();
            }
            result("committed total", committed);
        }
        Collections.sort(values);
        result("consumed", values.size());
        result("consumed distinct", values.stream().distinct().count());

        try (Admin admin = Admin.create(common)) {
            Map<TopicPartition, OffsetAndMetadata> offsets =
                    admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(60, TimeUnit.SECONDS);
            result("group offsets", new TreeMap<>(offsets.entrySet().stream().collect(
                    java.util.stream.Collectors.toMap(e -> e.getKey().partition(), e -> e.getValue().offset()))));
            admin.deleteTopics(List.of(topic)).all().get(60, TimeUnit.SECONDS);
            result("delete", "ok");
        }
        for (Map.Entry<String, String> e : RESULTS.entrySet()) {
            System.out.println("RESULT " + e.getKey() + "=" + e.getValue());
        }
        System.exit(values.size() == RECORDS ? 0 : 1);
    }
}
