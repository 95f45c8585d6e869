<?php
// Cluster settings Moodle keeps in its own store, applied by the kit on every rollout
// (idempotent): the application cache (MUC) mapped to Redis instead of shared disk.
// Prints "kit: changed ..." or "kit: ok" so Ansible can report changes truthfully.
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';

use core_cache\store;

$storename = 'kit_redis';
// cachestore_kitredis (the kit's plugin) is Moodle's Redis store reading the password from
// the secret file when it connects: the configuration below, which Moodle keeps in
// moodledata/muc and shows on its cache admin pages, has none.
$storeplugin = 'kitredis';
$wanted = [
    'server' => getenv('KIT_REDIS_HOST') . ':6379',
    'prefix' => 'muc_',
    'serializer' => 1,          // Redis::SERIALIZER_PHP
    'compressor' => 0,
    'connectiontimeout' => 3,
    'encryption' => false,
    'cafile' => '',
    'clustermode' => false,
];

// KIT_APP_CACHE=file keeps Moodle's default file store (lever redis_cache off).
$appstore = getenv('KIT_APP_CACHE') === 'file' ? 'default_application' : $storename;

$writer = cache_config_writer::instance();
$changes = [];
$stores = $writer->get_all_stores();
if ($appstore !== $storename) {
    // Nothing to set up on Redis. A Redis store the kit added earlier (the lever was on, or
    // an older kit) is emptied and removed once nothing maps to it any more: see below.
} else if (!isset($stores[$storename])) {
    $writer->add_store_instance($storename, $storeplugin, $wanted);
    $changes[] = 'added Redis store';
} else if (($stores[$storename]['plugin'] ?? '') !== $storeplugin
        || ($stores[$storename]['configuration'] ?? []) != $wanted) {
    // Also replaces an older kit's plain Redis store, whose configuration held the password.
    $writer->edit_store_instance($storename, $storeplugin, $wanted);
    $changes[] = 'updated Redis store';
}

// Definitions Moodle marks canuselocalstore (language strings, course module info, HTML
// Purifier, hook callbacks...) are keyed by revision, so a store on each container's own
// disk is safe: they are large and read on every page, and fetching them from Redis costs
// megabytes of transfer per request. Only when the application cache is on Redis.
$localname = 'kit_local';
$localwanted = ['path' => $CFG->localcachedir . '/muc-local', 'autocreate' => 1];   // config.php makes its lock folders
$stores = $writer->get_all_stores();
if ($appstore === $storename) {
    if (!isset($stores[$localname])) {
        $writer->add_store_instance($localname, 'file', $localwanted);
        $changes[] = 'added local file store';
    } else if (($stores[$localname]['configuration'] ?? []) != $localwanted) {
        $writer->edit_store_instance($localname, 'file', $localwanted);
        $changes[] = 'updated local file store';
    }
}
$mapped = [];
foreach ($writer->get_definition_mappings() as $mapping) {
    $mapped[$mapping['definition']][] = $mapping['store'];
}
foreach ($writer->get_definitions() as $id => $definition) {
    $local = $appstore === $storename && !empty($definition['canuselocalstore'])
        && (int) $definition['mode'] === store::MODE_APPLICATION;
    $have = $mapped[$id] ?? [];
    // Mappings an administrator made by hand are left alone; only the kit's own are undone.
    $want = $local ? [$localname] : ($have === [$localname] ? [] : $have);
    if ($have !== $want) {
        $writer->set_definition_mappings($id, $want);
        $changes[] = ($local ? 'local store for ' : 'default store for ') . $id;
    }
}

$current = [];
foreach ($writer->get_mode_mappings() as $mapping) {
    $current[$mapping['mode']][] = $mapping['store'];
}
$mappings = [
    store::MODE_APPLICATION => [$appstore],
    store::MODE_SESSION => ['default_session'],
    store::MODE_REQUEST => ['default_request'],
];
if (($current[store::MODE_APPLICATION] ?? []) !== [$appstore]) {
    $writer->set_mode_mappings($mappings);
    $changes[] = "application cache mapped to $appstore";
}

// The lever off: the kit's Redis store and its local one, now unmapped, are emptied and
// removed, so Redis holds no stale application cache (a later switch back would serve it)
// and Moodle's cache admin page lists no store the site does not use.
foreach ([$storename => 'Redis store', $localname => 'local file store'] as $name => $what) {
    if ($appstore === $storename || !isset($writer->get_all_stores()[$name])) {
        continue;
    }
    $inuse = false;
    foreach (array_merge($writer->get_mode_mappings(), $writer->get_definition_mappings()) as $mapping) {
        $inuse = $inuse || $mapping['store'] === $name;
    }
    if (!$inuse) {
        cache_helper::purge_store($name);
        $writer->delete_store_instance($name);
        $changes[] = "removed $what";
    }
}

if ($changes) {
    cache_helper::purge_all();
    echo 'kit: changed: ' . implode(', ', $changes) . "\n";
} else {
    echo "kit: ok\n";
}
